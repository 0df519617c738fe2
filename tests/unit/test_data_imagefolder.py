"""Image folders: scanning, decoding, in-memory loading and the streaming Ray dataset."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysight.data import imagefolder, load_arrays
from raysight.data.imagefolder import decode_image, image_size_of, scan, to_ray_dataset
from raysight.data.imagefolder import load_arrays as load_folder_arrays
from raysight.errors import DataError
from tests.builders import encode_image


def _noise(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _solid(value: int, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)  # (H, W, 3)


def _make_folder(root: Path) -> Path:
    """ROOT/train/{cat,dog}/ with PNG and JPEG files of distinct solid colours."""
    cats = root / "train" / "cat"
    dogs = root / "train" / "dog"
    cats.mkdir(parents=True)
    dogs.mkdir(parents=True)
    (cats / "b.png").write_bytes(encode_image(_solid(10), "PNG"))
    (cats / "a.PNG").write_bytes(encode_image(_solid(20), "PNG"))
    (dogs / "x.JPEG").write_bytes(encode_image(_solid(200), "JPEG"))
    (dogs / "y.jpg").write_bytes(encode_image(_solid(220), "JPEG"))
    (dogs / "notes.txt").write_text("ignored")
    (dogs / ".hidden.png").write_bytes(b"ignored")
    (root / "train" / ".cache").mkdir()  # hidden: not a class
    return root


def test_scan_lists_classes_and_images(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    index = scan(str(root), "train")
    assert index.class_names == ("cat", "dog")
    assert [Path(p).name for p in index.paths] == ["a.PNG", "b.png", "x.JPEG", "y.jpg"]
    assert index.labels == (0, 0, 1, 1)
    assert index.split == "train"


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with pytest.raises(DataError, match="test"):
        scan(str(tmp_path), "test")


def test_split_without_classes_is_named(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "stray.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"val: no class folders"):
        scan(str(tmp_path), "val")


def _classes(folder: Path, per_class: int = 2) -> Path:
    """FOLDER/{cat,dog}/ with a few tiny PNGs each."""
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            (folder / name / f"{i}.png").write_bytes(encode_image(_solid(10 * i), "PNG"))
    return folder


def _layout_error(root: Path, split: str = "train") -> str:
    with pytest.raises(DataError) as caught:
        scan(str(root), split)
    return str(caught.value)


def test_class_folders_outside_a_split_are_told_to_move(tmp_path: Path) -> None:
    _classes(tmp_path)
    assert _layout_error(tmp_path) == (
        f"expected {tmp_path}/train/<class>/*.jpg and {tmp_path}/test/<class>/...; "
        f"found class folders directly under {tmp_path} (cat, dog): "
        f"move them into {tmp_path}/train/ (and test images into {tmp_path}/test/<class>/)"
    )


def test_the_split_folder_itself_is_told_to_go_up(tmp_path: Path) -> None:
    split = _classes(tmp_path / "pets" / "train")
    assert _layout_error(split) == (
        f"{split} looks like a split folder itself, not the dataset's root: "
        f"set the data directory (--data-dir) to the folder above it, {tmp_path / 'pets'}"
    )


def test_loose_images_are_told_to_sort_into_classes(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(encode_image(_solid(i), "JPEG"))
    assert _layout_error(tmp_path) == (
        f"expected {tmp_path}/train/<class>/*.jpg; found 3 images directly under {tmp_path} "
        f"and no class folders: sort them into {tmp_path}/train/<class>/"
    )


def test_loose_images_in_the_split_are_told_to_sort_into_classes(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(encode_image(_solid(1), "PNG"))
    assert _layout_error(tmp_path) == (
        f"{tmp_path}/train: no class folders; sort its 1 images into {tmp_path}/train/<class>/"
    )


def test_a_dataset_one_level_down_is_pointed_at(tmp_path: Path) -> None:
    _classes(tmp_path / "jpeg" / "train")  # as `tar -xzf cifar10-jpeg.tar.gz` leaves it
    assert _layout_error(tmp_path) == (
        f"expected {tmp_path}/train/<class>/*.jpg; found {tmp_path}/jpeg/train: "
        f"set the data directory (--data-dir) to {tmp_path}/jpeg"
    )


def test_a_missing_split_names_the_folders_there(tmp_path: Path) -> None:
    _classes(tmp_path / "train")
    (tmp_path / "val").mkdir()
    assert _layout_error(tmp_path, "test") == (
        f"expected {tmp_path}/test/<class>/*.jpg; found train, val under {tmp_path}"
    )


def test_a_folder_with_only_a_training_split_is_told_the_layouts(tmp_path: Path) -> None:
    _classes(tmp_path / "train")
    with pytest.raises(DataError) as caught:
        imagefolder.find_layout(str(tmp_path))
    assert str(caught.value) == (
        f"{tmp_path}: found train/ only; expected train/ + validation/ (or val/), train/ + "
        "test/, or all three: a validation folder picks the best checkpoint, a test folder "
        f"scores it: add {tmp_path}/test/<class>/ images or a validation folder"
    )


@pytest.mark.parametrize(
    ("folders", "layout"),
    [
        (("train", "validation", "test"), ("train", "validation", "test")),
        (("train", "val"), ("train", "val", None)),
        (("train", "valid", ".cache"), ("train", "valid", None)),
        (("train", "test"), ("train", None, "test")),
    ],
)
def test_the_accepted_layouts_are_found(
    tmp_path: Path, folders: tuple[str, ...], layout: tuple[str | None, ...]
) -> None:
    for name in folders:
        (tmp_path / name).mkdir()
    found = imagefolder.find_layout(str(tmp_path))
    assert (found.train, found.validation, found.test) == layout
    assert found.final == (layout[2] or layout[1])


def test_a_root_without_train_gets_the_scan_s_advice(tmp_path: Path) -> None:
    _classes(tmp_path / "jpeg" / "train")
    with pytest.raises(
        DataError, match=f"set the data directory \\(--data-dir\\) to {tmp_path}/jpeg"
    ):
        imagefolder.find_layout(str(tmp_path))


def test_an_empty_root_names_what_is_missing(tmp_path: Path) -> None:
    assert _layout_error(tmp_path) == (
        f"expected {tmp_path}/train/<class>/*.jpg; {tmp_path}/train: directory not found"
    )


def test_a_missing_root_is_named(tmp_path: Path) -> None:
    assert _layout_error(tmp_path / "nowhere") == f"{tmp_path}/nowhere: directory not found"


def test_image_size_of_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(encode_image(_solid(5, size=(12, 30)), "PNG"))
    assert image_size_of(str(path)) == (12, 30)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.jpg: not a readable image"):
        image_size_of(str(tmp_path / "bad.jpg"))


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"bird: no \.jpg"):
        scan(str(root), "train")


def test_decode_keeps_aspect_and_crops_the_centre() -> None:
    # 40 wide x 10 high: black, then a grey centre 20 wide, then white.
    pixels = np.zeros((10, 40), dtype=np.uint8)
    pixels[:, 10:30] = 128
    pixels[:, 30:] = 255
    out = decode_image(encode_image(pixels, "PNG"), (4, 4), 1, "wide.png")
    assert out.shape == (1, 4, 4)
    assert out.dtype == np.uint8
    # Only the central 10x10 square is kept, and it is all grey: nothing was squashed in.
    np.testing.assert_array_equal(out, np.full((1, 4, 4), 128))


def test_decode_matches_resize_then_crop() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 24, 3), dtype=np.uint8)  # (H, W, C)
    out = decode_image(encode_image(pixels, "PNG"), (6, 6), 3, "noise.png")
    # Reference: shorter side 12 -> 6 (so 24 -> 12), then keep columns 3..8.
    halved = Image.fromarray(pixels).resize((12, 6), Image.Resampling.BILINEAR)
    expected = np.asarray(halved)[:, 3:9].transpose(2, 0, 1)
    np.testing.assert_array_equal(out, expected)


def test_decode_converts_channels() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    grey = decode_image(encode_image(rgb, "PNG"), (8, 8), 1, "red.png")
    colour = decode_image(encode_image(rgb[..., 0], "PNG"), (8, 8), 3, "grey.png")
    assert grey.shape == (1, 8, 8)
    assert int(grey[0, 0, 0]) == 76  # ITU-R 601 luma of pure red
    assert colour.shape == (3, 8, 8)
    np.testing.assert_array_equal(colour, np.full((3, 8, 8), 255))


def test_decode_returns_channels_first() -> None:
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 2] = 255  # blue
    out = decode_image(encode_image(rgb, "PNG"), (6, 6), 3, "blue.png")
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 255])
    assert out.flags.c_contiguous


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"definitely not an image", id="garbage"),
        pytest.param(encode_image(_noise(), "PNG")[:2000], id="truncated-png"),
        pytest.param(encode_image(_noise(), "JPEG")[:2000], id="truncated-jpeg"),
    ],
)
def test_undecodable_image_names_the_source(data: bytes) -> None:
    with pytest.raises(DataError, match=r"broken\.png"):
        decode_image(data, (8, 8), 3, "some/dir/broken.png")


def test_load_arrays_decodes_every_file(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    ds = load_arrays("imagefolder", str(root), "train", image_size=(6, 8), channels=3)
    assert ds.images.shape == (4, 3, 6, 8)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.class_names == ("cat", "dog")
    # Index order: a.PNG (20), b.png (10), then the two JPEGs (lossy, so approximately).
    assert (ds.images[0] == 20).all()
    assert (ds.images[1] == 10).all()
    assert np.abs(ds.images[2].astype(int) - 200).max() <= 3


def test_load_arrays_names_an_undecodable_file(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    (root / "train" / "dog" / "z.jpg").write_bytes(b"\xff\xd8\xff not really")
    with pytest.raises(DataError, match=r"z\.jpg"):
        load_folder_arrays(scan(str(root), "train"), (6, 8), 3)


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_a_file_of_another_format_is_named_and_not_parsed(
    tmp_path: Path, fmt: str, name: str, other_readers: list[str]
) -> None:
    # Named .jpg, but its bytes are another format: the content decides, not the name.
    root = _make_folder(tmp_path)
    wrong = root / "train" / "dog" / "z.jpg"
    wrong.write_bytes(encode_image(_solid(50), fmt))
    with pytest.raises(DataError) as error:
        load_folder_arrays(scan(str(root), "train"), (6, 8), 3)
    assert str(error.value) == f"{wrong}: a {name} file; convert it to JPEG or PNG, or remove it"
    with pytest.raises(DataError, match=re.escape(f"{wrong}: a {name} file")):
        image_size_of(str(wrong))
    assert other_readers == []  # named from its leading bytes, not by its reader


def test_an_unknown_file_is_seen_by_no_other_reader(other_readers: list[str]) -> None:
    with pytest.raises(DataError) as error:
        decode_image(b"\x00\x01 no format starts like this", (8, 8), 3, "a.png")
    assert str(error.value) == "a.png: not a readable image; expected a JPEG or PNG file"
    assert other_readers == []


def test_a_png_named_jpg_decodes_by_its_content(tmp_path: Path) -> None:
    root = _make_folder(tmp_path)
    (root / "train" / "dog" / "x.JPEG").write_bytes(encode_image(_solid(200), "PNG"))
    ds = load_folder_arrays(scan(str(root), "train"), (6, 8), 3)
    assert (ds.images[2] == 200).all()  # lossless: exactly the PNG's pixels


def test_registry_requires_size_channels_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image_size and channels"):
        load_arrays("imagefolder", str(tmp_path), "train")
    with pytest.raises(DataError, match="root"):
        load_arrays("imagefolder", None, "train", image_size=(8, 8), channels=3)
    with pytest.raises(DataError, match="digits, mnist"):
        load_arrays("imagenet", str(tmp_path), "train")


@pytest.mark.integration
@pytest.mark.usefixtures("ray_cluster")
def test_ray_dataset_streams_decoded_rows(tmp_path: Path) -> None:
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    root = _make_folder(tmp_path)
    index = scan(str(root), "train")
    ds = to_ray_dataset(index, (6, 8), 1)
    # Lazy: the file is replaced after the dataset is built, and the new pixels come out.
    replaced = root / "train" / "cat" / "a.PNG"
    replaced.write_bytes(encode_image(_solid(90), "PNG"))
    os.utime(replaced)

    rows = list(ds.iter_rows())
    assert len(rows) == 4
    by_label = sorted((int(r["label"]), int(r["image"].mean())) for r in rows)
    assert [label for label, _ in by_label] == [0, 0, 1, 1]
    images = [np.asarray(r["image"]) for r in rows]
    assert all(img.shape == (1, 6, 8) and img.dtype == np.uint8 for img in images)
    grey_of_90 = round(90 * 0.299 + 90 * 0.587 + 90 * 0.114)
    assert sorted(int(img[0, 0, 0]) for img in images)[:2] == [10, grey_of_90]
