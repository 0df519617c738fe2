"""Local paths and URIs through pyarrow.fs."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs
import pytest

from raysight import storage
from raysight.errors import DataError


def test_resolve_makes_relative_local_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    filesystem, path = storage.resolve("sub/file.bin")
    assert isinstance(filesystem, pyarrow.fs.LocalFileSystem)
    assert path == str(tmp_path / "sub" / "file.bin")


def test_resolve_uses_the_uri_scheme() -> None:
    # The in-memory "mock" scheme stands in for s3:// or gs:// without any network.
    filesystem, path = storage.resolve("mock:///bucket/key")
    assert not isinstance(filesystem, pyarrow.fs.LocalFileSystem)
    assert path == "bucket/key"


def test_resolve_rejects_an_unknown_scheme() -> None:
    with pytest.raises(DataError, match="nosuch://x"):
        storage.resolve("nosuch://x")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket/data", ("mnist", "a.gz"), "s3://bucket/data/mnist/a.gz"),
        ("s3://bucket/data/", ("/mnist/",), "s3://bucket/data/mnist"),
        ("gs://bucket", ("x",), "gs://bucket/x"),
        ("rel/dir", ("x", "y"), os.path.join("rel/dir", "x", "y")),
        ("/abs", ("x",), "/abs/x"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


def test_read_bytes_returns_raw_bytes_even_for_gz(tmp_path: Path) -> None:
    # pyarrow would gunzip by extension unless told not to; readers need the raw bytes.
    payload = b"\x1f\x8bnot really gzip"
    (tmp_path / "x.gz").write_bytes(payload)
    assert storage.read_bytes(str(tmp_path / "x.gz")) == payload


def test_read_bytes_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.bin"):
        storage.read_bytes(str(tmp_path / "missing.bin"))


def test_list_dir_is_sorted_and_flags_directories(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a").mkdir()
    (tmp_path / "c.txt").write_text("c")
    assert storage.list_dir(str(tmp_path)) == [
        (str(tmp_path / "a"), True),
        (str(tmp_path / "b.txt"), False),
        (str(tmp_path / "c.txt"), False),
    ]


def test_list_dir_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        storage.list_dir(str(tmp_path / "nowhere"))


def _has_meta(entries: dict[str, bool]) -> bool:
    return entries.get("meta") is False  # a file named "meta"


def test_find_below_returns_the_nearest_match(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "meta").write_text("")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meta").write_text("")
    assert storage.find_below(str(tmp_path), _has_meta) == str(tmp_path / "b")  # breadth first


def test_find_below_skips_root_hidden_folders_and_depth(tmp_path: Path) -> None:
    (tmp_path / "meta").write_text("")  # the root itself is not "below"
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "meta").write_text("")
    (tmp_path / "x" / "y" / "z").mkdir(parents=True)
    (tmp_path / "x" / "y" / "z" / "meta").write_text("")
    assert storage.find_below(str(tmp_path), _has_meta) is None
    assert storage.find_below(str(tmp_path), _has_meta, depth=3) == str(tmp_path / "x" / "y" / "z")


def test_find_below_lists_a_bounded_number_of_folders(tmp_path: Path) -> None:
    for i in range(80):
        (tmp_path / f"{i:02d}").mkdir()
    (tmp_path / "79" / "meta").write_text("")
    assert storage.find_below(str(tmp_path), _has_meta) is None  # folder 79 is past the limit
