"""Downloads against a local HTTP server: success, fallback between mirrors, bad checksums."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raysight.data.download import FILES, MIRRORS, download
from raysight.errors import DataError

GOOD = {"train-images-idx3-ubyte.gz": b"good images", "t10k-labels-idx1-ubyte.gz": b"good labels"}
BAD = {"train-images-idx3-ubyte.gz": b"tampered images", "t10k-labels-idx1-ubyte.gz": b"bad"}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Serve "good/", "bad/" and "empty/" folders on 127.0.0.1; yield their base URLs."""
    # A proxy from the environment must not intercept requests to the local server.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    served = tmp_path / "served"
    for folder, files in (("good", GOOD), ("bad", BAD), ("empty", {})):
        (served / folder).mkdir(parents=True)
        for name, data in files.items():
            (served / folder / name).write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {name: f"{base}/{name}/" for name in ("good", "bad", "empty")}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A download folder, with FILES["mnist"] pointing at the fixture files' checksums."""
    monkeypatch.setitem(FILES, "mnist", {name: _md5(data) for name, data in GOOD.items()})
    return tmp_path / "dest"


def test_shipped_tables_are_consistent() -> None:
    assert set(MIRRORS) == set(FILES) == {"mnist", "fashion-mnist"}
    assert all(url.endswith("/") for urls in MIRRORS.values() for url in urls)
    assert list(FILES["mnist"]) == list(FILES["fashion-mnist"])
    for checksums in FILES.values():
        assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in checksums.values())


def test_downloads_and_verifies(serve: dict[str, str], dest: Path) -> None:
    paths = download("mnist", str(dest), mirrors=[serve["good"]], timeout=5)
    assert [p.name for p in paths] == list(GOOD)
    for path in paths:
        assert path.read_bytes() == GOOD[path.name]
        assert path.stat().st_mode & 0o777 == 0o644  # readable, not the temp file's 0600
    assert sorted(p.name for p in dest.iterdir()) == sorted(GOOD)  # no temporary files left


def test_skips_files_that_are_already_valid(serve: dict[str, str], dest: Path) -> None:
    download("mnist", str(dest), mirrors=[serve["good"]], timeout=5)
    # A mirror that would fail every request proves nothing is fetched again.
    paths = download("mnist", str(dest), mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert [p.read_bytes() for p in paths] == list(GOOD.values())


def test_replaces_a_corrupt_existing_file(serve: dict[str, str], dest: Path) -> None:
    dest.mkdir()
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")
    download("mnist", str(dest), mirrors=[serve["good"]], timeout=5)
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == GOOD["t10k-labels-idx1-ubyte.gz"]


def test_falls_back_past_bad_and_missing_mirrors(serve: dict[str, str], dest: Path) -> None:
    mirrors = [serve["empty"], serve["bad"], serve["good"]]
    paths = download("mnist", str(dest), mirrors=mirrors, timeout=5)
    assert [p.read_bytes() for p in paths] == list(GOOD.values())
    assert sorted(p.name for p in dest.iterdir()) == sorted(GOOD)


def test_all_mirrors_bad_raises_and_leaves_nothing(serve: dict[str, str], dest: Path) -> None:
    name = "train-images-idx3-ubyte.gz"
    expected, actual = _md5(GOOD[name]), _md5(BAD[name])
    with pytest.raises(DataError, match=rf"{name}.*{actual}.*{expected}"):
        download("mnist", str(dest), mirrors=[serve["bad"], serve["empty"]], timeout=5)
    assert list(dest.iterdir()) == []


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar10"):
        download("cifar10", str(tmp_path), mirrors=[])
