"""Paths that may be local or on an object store (s3://, gs://), through pyarrow.fs: where
datasets are read and checkpoints are read and published, so that neither imports the other."""

from __future__ import annotations

import logging
import os
import posixpath
from collections import deque
from collections.abc import Callable

import pyarrow
import pyarrow.fs

from raysight.errors import DataError

logger = logging.getLogger(__name__)

_SCHEME_SEP = "://"
# Folders `find_below` lists at most: on an object store each is a request, and it only
# runs to word an error message.
_SEARCH_LIMIT = 64


def is_uri(path: str) -> bool:
    """Whether `path` names a location through a scheme (s3://, gs://, file://)."""
    return _SCHEME_SEP in path


def resolve(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Find the filesystem that holds `uri` and the path inside it.

    Args:
        uri: A URI such as "s3://bucket/key" or a local path, relative or absolute.

    Returns:
        The filesystem and the path within it; local paths become absolute.

    Raises:
        DataError: If the URI names a scheme pyarrow cannot open.
    """
    if not is_uri(uri):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowException, ValueError) as exc:
        raise DataError(f"{uri}: cannot open this location ({exc})") from exc


def read_bytes(uri_or_path: str) -> bytes:
    """Read a whole file, byte for byte (no decompression).

    Args:
        uri_or_path: A URI or a local path.

    Returns:
        The file's contents.

    Raises:
        DataError: If the file is missing or cannot be read; the message names it.
    """
    filesystem, path = resolve(uri_or_path)
    try:
        # compression=None: pyarrow would otherwise gunzip "*.gz" silently, by file extension.
        with filesystem.open_input_stream(path, compression=None) as stream:
            data: bytes = stream.read()
    except FileNotFoundError as exc:
        raise DataError(f"{uri_or_path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{uri_or_path}: cannot read ({exc})") from exc
    return data


def join(base: str, *parts: str) -> str:
    """Join path components with "/" for URIs and the OS separator for local paths.

    Args:
        base: A URI such as "s3://bucket/dir" or a local path.
        *parts: Components to append.

    Returns:
        The joined URI or path.
    """
    if not is_uri(base):
        return os.path.join(base, *parts)
    stripped = [part.strip("/") for part in parts if part.strip("/")]
    return "/".join([base.rstrip("/"), *stripped])


def list_dir(uri: str) -> list[tuple[str, bool]]:
    """List a directory, one level deep.

    Args:
        uri: A URI or a local path of a directory.

    Returns:
        (full URI or path, is_dir) for each entry, sorted by name.

    Raises:
        DataError: If the directory is missing or is not a directory.
    """
    filesystem, path = resolve(uri)
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(path, recursive=False))
    except FileNotFoundError as exc:
        raise DataError(f"{uri}: directory not found") from exc
    except OSError as exc:
        raise DataError(f"{uri}: cannot list directory ({exc})") from exc
    infos.sort(key=lambda info: info.base_name)
    # Keep the caller's spelling (scheme included) so the entries can be passed straight back.
    return [
        (join(uri, info.base_name), info.type == pyarrow.fs.FileType.Directory) for info in infos
    ]


def name_of(entry: str) -> str:
    """The last component of a path or URI from `list_dir`, e.g. "train"."""
    # list_dir joins entries with "/", both for URIs and for local paths on POSIX.
    return posixpath.basename(entry.rstrip("/"))


def find_below(root: str, holds: Callable[[dict[str, bool]], bool], depth: int = 2) -> str | None:
    """The nearest folder below `root` whose entries pass `holds`, searched breadth first.

    For messages that name where the data is when the given folder is a level or two too
    high (an archive extracted into a folder of its own, torchvision's `MNIST/raw/`).
    Hidden and unreadable folders are skipped.

    Args:
        root: A URI or a local path of a directory.
        holds: Takes one folder's entries as {name: is_dir} and says if it is the one.
        depth: How many levels below `root` to look.

    Returns:
        The folder's path or URI, or None if none within reach (or within the first
        `_SEARCH_LIMIT` folders listed) passes.
    """
    queue = deque([(root, 0)])
    listed = 0
    while queue and listed < _SEARCH_LIMIT:
        folder, level = queue.popleft()
        try:
            entries = list_dir(folder)
        except DataError:
            continue
        listed += 1
        if level and holds({name_of(entry): is_dir for entry, is_dir in entries}):
            return folder
        if level < depth:
            queue.extend(
                (entry, level + 1)
                for entry, is_dir in entries
                if is_dir and not name_of(entry).startswith(".")
            )
    return None
