"""Folders of image files: ROOT/<split>/<class>/*.{jpg,jpeg,png} (the cats-vs-dogs layout)."""

from __future__ import annotations

import functools
import io
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from raysight import imaging, storage
from raysight.data.base import ArrayDataset
from raysight.errors import DataError

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
# The formats read, by Pillow's reader names: those the extensions promise, and WebP, which
# serving accepts too, so a file serving takes decodes here alike. Only these readers see a
# file's bytes, whatever its name says (JPEG's reader also opens multi-picture MPO photos).
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
# What Pillow raises on a file it cannot read (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Folder names that say "a split", not "a class": a root named so is probably one level low.
_SPLIT_NAMES: frozenset[str] = frozenset({"train", "test", "val", "valid", "validation"})
# Subfolders of a wrong root opened to tell class folders from other folders.
_PEEK_FOLDERS = 3
# Rows per Ray Data decode task: small enough that a batch of 224x224 RGB images stays
# around 10 MB, large enough to amortise the per-batch overhead.
_DECODE_BATCH_SIZE = 64


@dataclass(frozen=True)
class ImageFolderIndex:
    """The files of one split and their labels, without any pixels.

    Attributes:
        root: The dataset root as given.
        split: The split folder name, e.g. "train".
        paths: Full path or URI of each image, grouped by class, sorted within a class.
        labels: Class index of each path.
        class_names: Sorted names of the class folders.
    """

    root: str
    split: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


# Folder names of a validation split, in the order looked for: the book's, then the
# common abbreviations.
VALIDATION_NAMES: tuple[str, ...] = ("validation", "val", "valid")


@dataclass(frozen=True)
class FolderLayout:
    """The split folders an image-folder dataset has under its root.

    Attributes:
        train: The training folder's name ("train").
        validation: The folder that picks the best checkpoint, e.g. "validation"; None to
            hold out a share of the training folder instead.
        test: The folder that scores the best checkpoint once ("test"); None when absent,
            and the final figure is then on the validation folder.
    """

    train: str
    validation: str | None
    test: str | None

    @property
    def final(self) -> str:
        """The folder the final figure is measured on: test, else validation."""
        final = self.test or self.validation
        assert final is not None  # find_layout accepts no layout without either
        return final

    def describe(self) -> str:
        """The layout as the folders' names, e.g. "train/ + validation/ + test/"."""
        return " + ".join(f"{name}/" for name in (self.train, self.validation, self.test) if name)


def find_layout(root: str) -> FolderLayout:
    """Which of the accepted layouts `root` holds: train/ with validation/ (or val/,
    valid/), test/, or both.

    Raises:
        DataError: If `root` has no train/ folder (the message says what it has instead and
            the fix), or only train/, or more than one validation folder.
    """
    folders = {
        storage.name_of(entry)
        for entry, is_dir in storage.list_dir(root)
        if is_dir and not storage.name_of(entry).startswith(".")
    }
    if "train" not in folders:
        scan(root, "train")  # raises, naming what is wrong with the root and the fix
    validation = [name for name in VALIDATION_NAMES if name in folders]
    if len(validation) > 1:
        raise DataError(
            f"{root}: both {validation[0]}/ and {validation[1]}/; keep one validation folder"
        )
    test = "test" if "test" in folders else None
    if not validation and test is None:
        raise DataError(
            f"{root}: found train/ only; expected train/ + validation/ (or val/), "
            f"train/ + test/, or all three: a validation folder picks the best checkpoint, "
            f"a test folder scores it: add {storage.join(root, 'test')}/<class>/ images or "
            f"a validation folder"
        )
    return FolderLayout("train", validation[0] if validation else None, test)


def _is_image(entry: str) -> bool:
    return posixpath.splitext(storage.name_of(entry))[1].lower() in IMAGE_EXTENSIONS


def scan(root: str, split: str) -> ImageFolderIndex:
    """List the images of one split; classes are the sorted subfolder names.

    Hidden entries (names starting with ".") and files with other extensions are ignored.

    Args:
        root: Dataset root, a local path or a URI.
        split: Subfolder of `root`, e.g. "train" or "test".

    Returns:
        The index of every image in the split.

    Raises:
        DataError: If the split folder is missing, has no class folders, or a class folder
            holds no images. The message names the folder, and for a root one level too
            high or too low, or class folders outside a split, the fix.
    """
    split_dir = storage.join(root, split)
    try:
        split_entries = storage.list_dir(split_dir)
    except DataError as exc:
        raise DataError(_wrong_root(root, split, exc)) from exc
    class_dirs = [
        entry
        for entry, is_dir in split_entries
        if is_dir and not storage.name_of(entry).startswith(".")
    ]
    if not class_dirs:
        loose = sum(1 for entry, is_dir in split_entries if not is_dir and _is_image(entry))
        hint = f"; sort its {loose} images into {split_dir}/<class>/" if loose else ""
        raise DataError(f"{split_dir}: no class folders{hint}")
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = [
            entry
            for entry, is_dir in storage.list_dir(class_dir)
            if not is_dir and not storage.name_of(entry).startswith(".") and _is_image(entry)
        ]
        if not files:
            raise DataError(f"{class_dir}: no .jpg, .jpeg or .png images")
        paths.extend(files)
        labels.extend([label] * len(files))
    logger.info("%s: %d images in %d classes", split_dir, len(paths), len(class_dirs))
    return ImageFolderIndex(
        root=root,
        split=split,
        paths=tuple(paths),
        labels=tuple(labels),
        class_names=tuple(storage.name_of(d) for d in class_dirs),
    )


def _wrong_root(root: str, split: str, missing: DataError) -> str:
    """Why `root` has no readable `split` folder, worded as the fix where it can be seen."""
    entries = storage.list_dir(root)  # a missing root raises here, naming the root
    expected = f"expected {storage.join(root, split)}/<class>/*.jpg"
    hint = _misplaced(root, split, entries, expected)
    if hint is not None:
        return hint
    found = storage.find_below(root, lambda below: below.get(split) is True)
    if found is not None:
        return (
            f"{expected}; found {storage.join(found, split)}: "
            f"set the data directory (--data-dir) to {found}"
        )
    return f"{expected}; {missing}"


def _misplaced(root: str, split: str, entries: list[tuple[str, bool]], expected: str) -> str | None:
    """The fix when `root`'s own entries show what went wrong, else None."""
    folders = [
        entry for entry, is_dir in entries if is_dir and not storage.name_of(entry).startswith(".")
    ]
    names = [storage.name_of(entry) for entry in folders]
    train, test = storage.join(root, "train"), storage.join(root, "test")
    if storage.name_of(root) in _SPLIT_NAMES and folders:
        parent = posixpath.dirname(root.rstrip("/"))
        return (
            f"{root} looks like a split folder itself, not the dataset's root: "
            f"set the data directory (--data-dir) to the folder above it, {parent}"
        )
    if split != "train" and "train" in names:
        return f"{expected}; found {', '.join(sorted(names))} under {root}"
    if any(_holds_images(folder) for folder in folders[:_PEEK_FOLDERS]):
        shown = ", ".join(names[:_PEEK_FOLDERS]) + (", ..." if len(names) > _PEEK_FOLDERS else "")
        return (
            f"{expected} and {test}/<class>/...; found class folders directly under "
            f"{root} ({shown}): move them into {train}/ (and test images into {test}/<class>/)"
        )
    loose = sum(1 for entry, is_dir in entries if not is_dir and _is_image(entry))
    if loose:
        return (
            f"{expected}; found {loose} images directly under {root} and no class folders: "
            f"sort them into {storage.join(root, split)}/<class>/"
        )
    return None


def _holds_images(folder: str) -> bool:
    try:
        return any(not is_dir and _is_image(entry) for entry, is_dir in storage.list_dir(folder))
    except DataError:
        return False


def _open(data: bytes, source: str) -> Image.Image:
    # Reads the header only: format and size, no pixels yet.
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{source}: {_unopened(data, exc)}") from exc


def _unopened(data: bytes, error: Exception) -> str:
    # Why no accepted reader opened the file, named from its leading bytes where they say.
    fmt = imaging.sniff_format(data)
    if fmt is not None and fmt not in FORMATS:
        return f"a {imaging.display_name(fmt)} file; convert it to JPEG or PNG, or remove it"
    if isinstance(error, Image.UnidentifiedImageError):  # its text only shows a buffer's repr
        return "not a readable image; expected a JPEG or PNG file"
    return f"not a readable image ({error})"


def decode_image(data: bytes, size: tuple[int, int], channels: int, source: str) -> np.ndarray:
    """Decode an encoded image to a fixed-size array.

    The image is turned upright per its EXIF orientation, converted to grey ("L") or "RGB",
    then scaled with bilinear filtering so its shorter side fits and centre-cropped to `size`
    (`raysight.imaging.to_pixels`, which serving shares so both see the same pixels). A
    large JPEG decodes at a reduced scale that still covers `size`
    (`raysight.imaging.prepare_decode`, also shared).

    Args:
        data: Encoded image bytes: a JPEG, PNG or WebP by content, whatever the file's name.
        size: Output (H, W).
        channels: 1 for grey, 3 for RGB.
        source: Where the bytes came from, for messages.

    Returns:
        (C, H, W) uint8 array.

    Raises:
        DataError: If the bytes are not a decodable JPEG, PNG or WebP image; the message
            names `source`, and the format when the file is of another one.
        ValueError: If `channels` is not 1 or 3, or `size` is not positive.
    """
    imaging.check_geometry(size, channels)
    with _open(data, source) as opened:
        imaging.prepare_decode(opened, size)
        try:
            opened.load()  # decode now, so truncation is reported here and not later
            return imaging.to_pixels(opened, size, channels)
        except _DECODE_ERRORS as exc:
            raise DataError(f"{source}: cannot decode image ({exc})") from exc


def image_size_of(path: str) -> tuple[int, int]:
    """The (H, W) of an image file as stored, from its header.

    Args:
        path: A URI or a local path.

    Returns:
        Height and width in pixels, before any EXIF rotation.

    Raises:
        DataError: If the file cannot be read or is not a JPEG, PNG or WebP image.
    """
    with _open(storage.read_bytes(path), path) as opened:
        width, height = opened.size
    return height, width


def decode_files(paths: Sequence[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Read and decode image files into one (N, C, H, W) uint8 array, in order.

    Raises:
        DataError: If a file cannot be read or decoded; the message names it.
    """
    images = np.empty((len(paths), channels, *size), dtype=np.uint8)  # (N, C, H, W)
    for i, path in enumerate(paths):
        images[i] = decode_image(storage.read_bytes(path), size, channels, path)
    return images


def load_arrays(
    index: ImageFolderIndex, size: tuple[int, int], channels: int, name: str = "imagefolder"
) -> ArrayDataset:
    """Decode every image of an index into memory (for small folders and evaluation).

    Args:
        index: From `scan`.
        size: Output (H, W) of every image.
        channels: 1 for grey, 3 for RGB.
        name: Dataset name to record.

    Returns:
        (N, C, H, W) uint8 images in index order.

    Raises:
        DataError: If a file cannot be read or decoded; the message names it.
    """
    return ArrayDataset(
        name=name,
        images=decode_files(index.paths, size, channels),
        labels=np.asarray(index.labels, dtype=np.int64),
        class_names=index.class_names,
    )


def _decode_batch(
    batch: dict[str, np.ndarray], size: tuple[int, int], channels: int
) -> dict[str, np.ndarray]:
    # The Ray Data mapper of to_ray_dataset. batch: "path" (B,) str, "label" (B,) ints.
    # Returns "image" (B, C, H, W) uint8 and "label" (B,) int64.
    images = decode_files([str(p) for p in batch["path"]], size, channels)
    return {"image": images, "label": np.asarray(batch["label"], dtype=np.int64)}


def to_ray_dataset(
    index: ImageFolderIndex, size: tuple[int, int], channels: int, shuffle_seed: int | None = None
) -> ray.data.Dataset:
    """Build a lazy, streaming Ray Dataset over an index.

    Only the (path, label) list is materialised; files are read and decoded by Ray Data
    tasks as the dataset is iterated, so memory stays bounded by the streaming executor.

    Args:
        index: From `scan`.
        size: Output (H, W) of every image.
        channels: 1 for grey, 3 for RGB.
        shuffle_seed: For training: every epoch reads the rows in a fresh order drawn from
            this seed. None keeps the index's order (evaluation).

    Returns:
        A dataset with columns "image" ((C, H, W) uint8 per row) and "label" (int64).
    """
    # Imported here so reading arrays does not pay for (or require) Ray.
    import ray.data

    items = [
        {"path": p, "label": label} for p, label in zip(index.paths, index.labels, strict=True)
    ]
    rows: ray.data.Dataset = ray.data.from_items(items)
    if shuffle_seed is not None:
        # The (path, label) rows are shuffled, not the pixels: cheap, and each execution
        # (epoch) draws a fresh order of the whole set, reproducible from the seed.
        rows = rows.random_shuffle(
            seed=ray.data.RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
        )
    return rows.map_batches(
        functools.partial(_decode_batch, size=size, channels=channels),
        batch_size=_DECODE_BATCH_SIZE,
        batch_format="numpy",
    )
