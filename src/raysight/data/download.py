"""Fetch MNIST or Fashion-MNIST from public mirrors, verified by md5 (`raysight data download`)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from raysight.errors import DataError

logger = logging.getLogger(__name__)

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# md5 of each .gz file exactly as the mirrors serve it.
FILES: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

_CHUNK_BYTES = 1 << 20


def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest_dir: Path, timeout: float) -> tuple[Path, str]:
    """Stream `url` into a new temporary file in `dest_dir`; return it and its md5.

    The temporary file is removed if anything fails, so no partial file is left behind.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def _download_file(
    file_name: str, expected: str, dest_dir: Path, mirrors: Sequence[str], timeout: float
) -> None:
    failures: list[str] = []
    for base in mirrors:
        url = (base if base.endswith("/") else base + "/") + file_name
        try:
            tmp, actual = _fetch(url, dest_dir, timeout)
        except OSError as exc:
            # Includes urllib's URLError/HTTPError, timeouts and resets mid-stream.
            logger.warning("download of %s failed: %s", url, exc)
            failures.append(f"{url}: {exc}")
            continue
        if actual != expected:
            tmp.unlink()
            logger.warning("%s: md5 %s, expected %s", url, actual, expected)
            failures.append(f"{url}: md5 {actual}, expected {expected}")
            continue
        # mkstemp makes the file private (0600); the dataset should be readable like any other.
        tmp.chmod(0o644)
        # Same directory, so the rename is atomic: readers see the old file or the whole new one.
        os.replace(tmp, dest_dir / file_name)
        logger.info("downloaded %s", url)
        return
    raise DataError(f"{file_name}: no mirror served a valid copy; " + "; ".join(failures))


def download(
    name: str, dest: str, mirrors: Sequence[str] | None = None, timeout: float = 30.0
) -> list[Path]:
    """Download a dataset's files into `dest`, skipping those already present and valid.

    Each file is tried on every mirror in turn, written to a temporary file in `dest`,
    checked against its md5, and only then moved into place.

    Args:
        name: "mnist" or "fashion-mnist".
        dest: Local folder; created if missing.
        mirrors: Base URLs to try, in order; defaults to `MIRRORS[name]`.
        timeout: Seconds to wait on each connection or read.

    Returns:
        The path of every file of the dataset, in `FILES[name]` order.

    Raises:
        DataError: If `name` is unknown, or a file could not be fetched with the right md5
            from any mirror (the message names the file, the expected and the actual hashes).
    """
    if name not in FILES:
        raise DataError(f"{name}: cannot download; known datasets: {sorted(FILES)}")
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    bases = tuple(mirrors) if mirrors is not None else MIRRORS[name]
    paths: list[Path] = []
    for file_name, expected in FILES[name].items():
        path = dest_dir / file_name
        if path.is_file() and _md5_of_file(path) == expected:
            logger.info("%s is present and valid; skipping", path)
        else:
            _download_file(file_name, expected, dest_dir, bases, timeout)
        paths.append(path)
    return paths
