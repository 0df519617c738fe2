"""Where a checkpoint may be saved: local directories here; object stores in
tests/integration/test_object_store.py, against a local S3 server."""

from pathlib import Path

import pytest
import torch

from raysight.checkpoint import (
    Manifest,
    Preprocessing,
    check_destination,
    copy_checkpoint,
    load_checkpoint,
    manifest_sha256,
    publish_checkpoint,
    read_manifest_at,
    save_checkpoint,
)
from raysight.errors import CheckpointError
from raysight.models import build_model, resolve_kwargs

_KWARGS = resolve_kwargs("convnet", in_channels=1, num_classes=2, image_size=(8, 8), padding="same")


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("convnet", **_KWARGS).state_dict()


def _manifest() -> Manifest:
    return Manifest.new(
        model="convnet",
        model_kwargs=_KWARGS,
        input_shape=(1, 8, 8),
        preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)),
        class_names=("no", "yes"),
        dataset="digits",
        metrics={"val_accuracy": 0.5},
        train_config={},
        epoch=1,
    )


@pytest.mark.parametrize("uri", ["s3://bucket/runs/x", "gs://bucket/x", "file:///tmp/x"])
def test_save_checkpoint_refuses_a_uri_rather_than_make_a_local_folder_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="publish_checkpoint writes to object stores"):
        save_checkpoint(uri, state_dict=_weights(), manifest=_manifest())
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" or "gs:"


def test_publishing_to_a_local_directory_saves_it_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    location = publish_checkpoint("runs/best", state_dict=_weights(), manifest=_manifest())
    assert location == str(tmp_path / "runs" / "best")
    assert load_checkpoint(location).manifest.class_names == ("no", "yes")


def test_publishing_to_a_file_uri_saves_it_atomically_on_disk(tmp_path: Path) -> None:
    location = publish_checkpoint(
        f"file://{tmp_path}/best", state_dict=_weights(), manifest=_manifest()
    )
    assert location == str(tmp_path / "best")
    assert load_checkpoint(location).manifest.epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging left beside


def test_a_local_destination_holding_nothing_or_a_checkpoint_is_accepted(tmp_path: Path) -> None:
    check_destination(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_destination(str(tmp_path / "empty"))
    saved = save_checkpoint(tmp_path / "old", state_dict=_weights(), manifest=_manifest())
    check_destination(str(saved))


def test_a_local_destination_holding_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="file: exists and is not a checkpoint directory"):
        check_destination(str(tmp_path / "file"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"")
    with pytest.raises(CheckpointError, match="photos: exists, is not empty and is not a check"):
        check_destination(str(tmp_path / "photos"))


def test_a_scheme_nothing_can_open_is_refused_naming_what_works() -> None:
    with pytest.raises(CheckpointError, match="cannot open this location") as info:
        check_destination("ftp://host/runs/x")
    assert str(info.value).startswith("ftp://host/runs/x: ")
    assert "a local directory or an s3:// or gs:// URI" in str(info.value)


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_manifest_is_read_with_the_sha256_that_pins_it(tmp_path: Path, scheme: str) -> None:
    path = save_checkpoint(tmp_path / "ckpt", state_dict=_weights(), manifest=_manifest())
    manifest, sha256 = read_manifest_at(f"{scheme}{path}")
    assert manifest.class_names == ("no", "yes")
    assert sha256 == manifest_sha256(path)
    assert load_checkpoint(path, expected_sha256=sha256).manifest == manifest


def test_reading_the_manifest_of_nothing_says_no_checkpoint_is_there(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere: no checkpoint there \(manifest.json"):
        read_manifest_at(str(tmp_path / "nowhere"))


def test_a_checkpoint_at_a_uri_is_copied_whole(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt", state_dict=_weights(), manifest=_manifest())
    (tmp_path / "copy").mkdir()
    copy_checkpoint(f"file://{path}", tmp_path / "copy")
    assert load_checkpoint(tmp_path / "copy").manifest == load_checkpoint(path).manifest


def test_copying_from_an_empty_location_names_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "copy").mkdir()
    uri = f"file://{tmp_path / 'empty'}"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        copy_checkpoint(uri, tmp_path / "copy")
