"""Checkpoint save/load/verify: round trips, tampering, format versions, atomicity."""

import ast
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F  # noqa: N812  (the conventional alias)

from raysight import checkpoint as ckpt
from raysight.checkpoint import (
    FORMAT_VERSION,
    LoadedCheckpoint,
    Manifest,
    ParentCheckpoint,
    Preprocessing,
    TrainState,
    build_from_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    store,
    verify_checkpoint,
)
from raysight.checkpoint.files import sha256_file
from raysight.errors import CheckpointError
from raysight.models import build_model, resolve_kwargs

INPUT_SHAPE = (1, 8, 8)
CLASS_NAMES = tuple(str(digit) for digit in range(10))
MODEL_ARGS: dict[str, Any] = {
    "in_channels": 1,
    "num_classes": len(CLASS_NAMES),
    "image_size": (8, 8),
    "padding": "same",
}


def _model() -> torch.nn.Module:
    return build_model("convnet", **MODEL_ARGS)


def _manifest(epoch: int = 3, **changes: Any) -> Manifest:
    manifest = Manifest.new(
        model="convnet",
        model_kwargs=resolve_kwargs("convnet", **MODEL_ARGS),
        input_shape=INPUT_SHAPE,
        preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)),
        class_names=CLASS_NAMES,
        dataset="digits",
        metrics={"val_accuracy": 0.975, "val_loss": 0.08},
        train_config={"epochs": 5, "lr": 0.01, "batch_size": 64},
        epoch=epoch,
    )
    return dataclasses.replace(manifest, **changes)


def _save(path: Path, model: torch.nn.Module, **kwargs: Any) -> Path:
    return save_checkpoint(path, state_dict=model.state_dict(), manifest=_manifest(), **kwargs)


def _siblings(path: Path) -> list[str]:
    """Entries beside the checkpoint other than itself: leftovers of a save."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def _rewrite_manifest(path: Path, **changes: Any) -> None:
    manifest_file = path / ckpt.MANIFEST_FILE
    data = json.loads(manifest_file.read_text())
    data.update(changes)
    manifest_file.write_text(json.dumps(data))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = _model()
    return _save(tmp_path / "ckpt", model), model


# --- round trips ----------------------------------------------------------------------


def test_round_trip_rebuilds_a_model_with_identical_outputs(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, model = saved
    loaded = load_checkpoint(path)
    rebuilt = build_from_checkpoint(loaded)

    assert not rebuilt.training
    images = torch.rand(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model.eval()(images))
    assert loaded.manifest.model == "convnet"
    assert loaded.manifest.class_names == CLASS_NAMES
    assert loaded.train_state is None


def test_directory_holds_exactly_the_documented_files(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    assert sorted(p.name for p in path.iterdir()) == [ckpt.MANIFEST_FILE, ckpt.WEIGHTS_FILE]
    assert _siblings(path) == []


def test_saved_manifest_carries_hashes_and_provenance(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    manifest = verify_checkpoint(path)
    assert manifest.format_version == FORMAT_VERSION
    assert len(manifest.weights_sha256) == 64
    assert manifest.train_state_sha256 is None
    assert manifest == dataclasses.replace(
        _manifest(),
        weights_sha256=manifest.weights_sha256,
        created_at=manifest.created_at,
    )


def test_manifest_json_round_trip() -> None:
    manifest = _manifest(weights_sha256="ab" * 32, train_state_sha256="cd" * 32)
    assert Manifest.from_json(manifest.to_json(), source="test") == manifest


def test_checkpoint_directory_follows_the_umask(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask


# --- strict manifest parsing ----------------------------------------------------------


def _manifest_dict() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_manifest(weights_sha256="ab" * 32).to_json())
    return result


def _without(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(field)


def _setting(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.update({field: value})


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(_without("class_names"), "class_names", id="missing"),
        pytest.param(_without("train_state_sha256"), "train_state_sha256", id="missing-null"),
        pytest.param(_setting("surprise", 1), "surprise", id="unexpected"),
        pytest.param(_setting("epoch", "3"), "epoch", id="string-for-int"),
        pytest.param(_setting("epoch", True), "epoch", id="bool-for-int"),
        pytest.param(_setting("class_names", "0123"), "class_names", id="string-for-list"),
        pytest.param(_setting("input_shape", [1, 8]), "input_shape", id="short-shape"),
        pytest.param(_setting("metrics", {"acc": "high"}), "metrics.acc", id="bad-metric"),
        pytest.param(
            _setting("preprocessing", {"mean": [0.5]}), "preprocessing.std", id="nested-missing"
        ),
        pytest.param(
            _setting("preprocessing", {"mean": [0.5, 0.5], "std": [1, 1]}),
            "preprocessing",
            id="mean-per-channel",
        ),
        pytest.param(_setting("weights_sha256", "abc"), "weights_sha256", id="bad-hash"),
        pytest.param(_setting("created_at", "yesterday"), "created_at", id="bad-time"),
        pytest.param(_setting("created_at", "2026-01-01T00:00:00"), "created_at", id="naive-time"),
        pytest.param(_setting("model_kwargs", [1]), "model_kwargs", id="list-for-object"),
        pytest.param(_setting("class_names", ["a", "b"]), "num_classes", id="class-count"),
    ],
)
def test_invalid_manifest_names_field_and_source(
    mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = _manifest_dict()
    mutate(data)
    with pytest.raises(CheckpointError, match=field) as info:
        Manifest.from_json(json.dumps(data), source="/ckpt/manifest.json")
    assert "/ckpt/manifest.json" in str(info.value)


def test_manifest_that_is_not_json_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Manifest.from_json("{", source="m.json")


def test_unknown_format_version_is_rejected(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    _rewrite_manifest(path, format_version=FORMAT_VERSION + 1, a_field_from_the_future=1)
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}") as info:
        load_checkpoint(path)
    assert f"reads versions 1 to {FORMAT_VERSION}" in str(info.value)


# --- class frequencies (format version 2) ---------------------------------------------

# Ten classes, one of them never seen in training: its prior is 0.0, not missing.
FREQUENCIES = (0.1, 0.2, 0.0, 0.05, 0.05, 0.1, 0.1, 0.1, 0.2, 0.1)


def test_class_frequencies_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    manifest = _manifest(class_frequencies=FREQUENCIES)
    path = save_checkpoint(tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=manifest)
    loaded = load_checkpoint(path).manifest
    assert loaded.class_frequencies == FREQUENCIES
    assert json.loads((path / ckpt.MANIFEST_FILE).read_text())["format_version"] == FORMAT_VERSION


def test_new_takes_any_sequence_of_numbers() -> None:
    manifest = Manifest.new(
        **{**_new_arguments(), "class_frequencies": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]}
    )
    assert manifest.class_frequencies == (1.0, *[0.0] * 9)
    assert all(type(f) is float for f in manifest.class_frequencies)
    assert Manifest.new(**_new_arguments()).class_frequencies is None


def _new_arguments() -> dict[str, Any]:
    manifest = _manifest()
    return {
        "model": manifest.model,
        "model_kwargs": manifest.model_kwargs,
        "input_shape": manifest.input_shape,
        "preprocessing": manifest.preprocessing,
        "class_names": manifest.class_names,
        "dataset": manifest.dataset,
        "metrics": manifest.metrics,
        "train_config": manifest.train_config,
        "epoch": manifest.epoch,
    }


def _as_version_1(path: Path) -> None:
    """Rewrite a checkpoint's manifest as raysight wrote it before format version 2."""
    manifest_file = path / ckpt.MANIFEST_FILE
    data = json.loads(manifest_file.read_text())
    del data["class_frequencies"], data["parent"]
    data["format_version"] = 1
    manifest_file.write_text(json.dumps(data, indent=2))


def test_a_version_1_checkpoint_loads_without_class_frequencies(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = saved
    _as_version_1(path)
    loaded = load_checkpoint(path)
    assert loaded.manifest.class_frequencies is None
    assert verify_checkpoint(path) == loaded.manifest
    images = torch.rand(2, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(build_from_checkpoint(loaded)(images), model.eval()(images))
    # Read once, it is upgraded: saved again, it is a checkpoint of the current version.
    again = save_checkpoint(
        tmp_path / "again", state_dict=loaded.state_dict, manifest=loaded.manifest
    )
    assert json.loads((again / ckpt.MANIFEST_FILE).read_text())["format_version"] == FORMAT_VERSION
    assert read_manifest(again).class_frequencies is None


def test_a_version_1_manifest_may_not_hold_class_frequencies(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    _rewrite_manifest(path, format_version=1, class_frequencies=list(FREQUENCIES))
    with pytest.raises(CheckpointError, match="unexpected field 'class_frequencies'"):
        load_checkpoint(path)


def test_a_version_2_manifest_must_hold_class_frequencies_even_if_null() -> None:
    data = _manifest_dict()
    assert data["class_frequencies"] is None
    del data["class_frequencies"]
    with pytest.raises(CheckpointError, match="field 'class_frequencies' is missing"):
        Manifest.from_json(json.dumps(data), source="m.json")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param([0.5, 0.5], "has 2 values for 10 classes", id="too-few"),
        pytest.param([*FREQUENCIES, 0.0], "has 11 values for 10 classes", id="too-many"),
        pytest.param([-0.1, 0.3, *FREQUENCIES[2:]], "non-negative", id="negative"),
        pytest.param([float("nan"), *FREQUENCIES[1:]], "finite", id="nan"),
        pytest.param([float("inf"), *FREQUENCIES[1:]], "finite", id="infinite"),
        pytest.param([0.2, *FREQUENCIES[1:]], "sums to 1.1", id="sum-above-1"),
        pytest.param([0.0] * 10, "sums to 0", id="all-zero"),
        pytest.param(["0.1", *FREQUENCIES[1:]], "must be a number", id="string"),
        pytest.param({"0": 1.0}, "must be a list of numbers", id="object"),
    ],
)
def test_invalid_class_frequencies_are_refused_on_load_and_save(
    tmp_path: Path, value: Any, words: str
) -> None:
    data = _manifest_dict()
    data["class_frequencies"] = value
    with pytest.raises(CheckpointError, match="'class_frequencies'") as info:
        Manifest.from_json(json.dumps(data), source="/ckpt/manifest.json")
    assert words in str(info.value)
    assert "/ckpt/manifest.json" in str(info.value)
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        bad = _manifest(class_frequencies=tuple(value))
        with pytest.raises(CheckpointError, match="'class_frequencies'"):
            save_checkpoint(tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=bad)
        assert not (tmp_path / "ckpt").exists()


# --- the parent of a fine-tuned checkpoint (format version 3) --------------------------

PARENT = ParentCheckpoint(sha256="cd" * 32, source="s3://models/digits-convnet", dataset="digits")


def test_a_parent_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    manifest = _manifest(parent=PARENT)
    path = save_checkpoint(tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=manifest)
    assert load_checkpoint(path).manifest.parent == PARENT
    assert json.loads((path / ckpt.MANIFEST_FILE).read_text())["parent"] == {
        "sha256": "cd" * 32,
        "source": "s3://models/digits-convnet",
        "dataset": "digits",
    }


def test_a_model_trained_from_scratch_records_a_null_parent(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    assert json.loads((path / ckpt.MANIFEST_FILE).read_text())["parent"] is None
    assert load_checkpoint(path).manifest.parent is None


def test_a_version_2_checkpoint_loads_without_a_parent(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    manifest_file = path / ckpt.MANIFEST_FILE
    data = json.loads(manifest_file.read_text())
    del data["parent"]
    data["format_version"] = 2
    manifest_file.write_text(json.dumps(data))
    assert load_checkpoint(path).manifest.parent is None


def test_a_version_2_manifest_may_not_hold_a_parent() -> None:
    data = _manifest_dict()
    data["format_version"] = 2
    with pytest.raises(CheckpointError, match="unexpected field 'parent'"):
        Manifest.from_json(json.dumps(data), source="m.json")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("s3://models/a", "field 'parent' must be an object or null", id="string"),
        pytest.param({"sha256": "cd" * 32, "source": "a"}, "'parent.dataset' is missing", id="few"),
        pytest.param(
            {"sha256": "CD" * 32, "source": "a", "dataset": "d"},
            "'parent.sha256' must be a lowercase hex sha256",
            id="upper-hex",
        ),
        pytest.param(
            {"sha256": "cd" * 32, "source": 1, "dataset": "d"},
            "'parent.source' must be a string",
            id="source-number",
        ),
    ],
)
def test_an_invalid_parent_is_refused_naming_the_field(value: Any, words: str) -> None:
    data = _manifest_dict()
    data["parent"] = value
    with pytest.raises(CheckpointError) as info:
        Manifest.from_json(json.dumps(data), source="/ckpt/manifest.json")
    assert words in str(info.value)
    assert "/ckpt/manifest.json" in str(info.value)


# --- damaged and missing checkpoints --------------------------------------------------


def test_tampered_weights_fail_the_hash_check(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    weights = path / ckpt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(data))

    # read_manifest does not hash, the full checks do.
    read_manifest(path)
    for check in (load_checkpoint, verify_checkpoint):
        with pytest.raises(CheckpointError, match="hash mismatch") as info:
            check(path)
        assert str(weights) in str(info.value)


def test_truncated_weights_fail_the_hash_check(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    weights = path / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_checkpoint(path)


def test_corrupt_weights_with_a_matching_hash_fail_to_parse(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    weights = path / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    _rewrite_manifest(path, weights_sha256=sha256_file(weights))
    with pytest.raises(CheckpointError, match="not a valid safetensors") as info:
        load_checkpoint(path)
    assert str(weights) in str(info.value)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (ckpt.MANIFEST_FILE, "manifest missing"),
        (ckpt.WEIGHTS_FILE, "file missing"),
    ],
)
def test_missing_file_is_reported(
    saved: tuple[Path, torch.nn.Module], missing: str, message: str
) -> None:
    path, _ = saved
    (path / missing).unlink()
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert missing in str(info.value)


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_unknown_model_in_manifest_is_a_checkpoint_error(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    _rewrite_manifest(path, model="vgg16")
    with pytest.raises(CheckpointError, match="vgg16"):
        build_from_checkpoint(load_checkpoint(path))


# --- refusing bad input before writing ------------------------------------------------


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    other = build_model("convnet", **{**MODEL_ARGS, "width": 8})
    with pytest.raises(CheckpointError, match="do not match"):
        save_checkpoint(tmp_path / "ckpt", state_dict=other.state_dict(), manifest=_manifest())
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_manifest_is_refused(tmp_path: Path) -> None:
    manifest = _manifest(preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0)))
    with pytest.raises(CheckpointError, match="per channel"):
        save_checkpoint(tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=manifest)
    assert list(tmp_path.iterdir()) == []


# --- numbers that are not finite ------------------------------------------------------

# Each group of numbers a manifest carries, as (field named in the error, whether the field
# is a list, how to put `bad` into the JSON document of a saved manifest).
_NUMBER_FIELDS: list[tuple[str, bool, Callable[[dict[str, Any], float], None]]] = [
    ("preprocessing.mean", True, lambda d, bad: d["preprocessing"].update(mean=[bad])),
    ("preprocessing.std", True, lambda d, bad: d["preprocessing"].update(std=[bad])),
    ("metrics.val_accuracy", False, lambda d, bad: d["metrics"].update(val_accuracy=bad)),
    ("metrics.val_loss", False, lambda d, bad: d["metrics"].update(val_loss=bad)),
    (
        "class_frequencies",
        True,
        lambda d, bad: d.update(class_frequencies=[bad, *FREQUENCIES[1:]]),
    ),
    ("train_config.lr", False, lambda d, bad: d["train_config"].update(lr=bad)),
    ("model_kwargs.width", False, lambda d, bad: d["model_kwargs"].update(width=bad)),
]
_NOT_FINITE = [("NaN", float("nan")), ("Infinity", float("inf")), ("-Infinity", float("-inf"))]


@pytest.mark.parametrize("group", _NUMBER_FIELDS, ids=[field for field, _, _ in _NUMBER_FIELDS])
@pytest.mark.parametrize("number", _NOT_FINITE, ids=[spelled for spelled, _ in _NOT_FINITE])
def test_a_number_that_is_not_finite_is_refused_on_load(
    tmp_path: Path,
    group: tuple[str, bool, Callable[[dict[str, Any], float], None]],
    number: tuple[str, float],
) -> None:
    field, in_list, put = group
    spelled, bad = number
    path = save_checkpoint(
        tmp_path / "ckpt",
        state_dict=_model().state_dict(),
        manifest=_manifest(class_frequencies=FREQUENCIES),
    )
    manifest_file = path / ckpt.MANIFEST_FILE
    data = json.loads(manifest_file.read_text())
    put(data, bad)
    # json.dumps writes the literals NaN, Infinity and -Infinity, which Python's json reads.
    manifest_file.write_text(json.dumps(data))
    assert spelled in manifest_file.read_text()

    requirement = "must hold finite numbers" if in_list else "must be a finite number"
    expected = f"{manifest_file}: field '{field}' {requirement}, got {spelled}"
    for read in (read_manifest, verify_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(path)
        assert str(info.value) == expected


def test_a_number_too_large_for_a_float_reads_as_infinity_and_is_refused(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    manifest_file = path / ckpt.MANIFEST_FILE
    text = manifest_file.read_text().replace('"val_loss": 0.08', '"val_loss": 1e999')
    manifest_file.write_text(text)
    with pytest.raises(CheckpointError, match=r"'metrics\.val_loss' must be a finite number"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("metrics.val_loss", {"metrics": {"val_accuracy": 0.1, "val_loss": float("nan")}}),
        ("preprocessing.mean", {"preprocessing": Preprocessing(mean=(math.inf,), std=(0.25,))}),
        ("train_config.lr", {"train_config": {"lr": -math.inf}}),
    ],
)
def test_a_number_that_is_not_finite_is_refused_before_saving(
    tmp_path: Path, field: str, changes: dict[str, Any]
) -> None:
    # A diverged run's NaN loss would otherwise make a checkpoint that could never load.
    with pytest.raises(CheckpointError, match=re.escape(f"field '{field}' must")) as info:
        save_checkpoint(
            tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=_manifest(**changes)
        )
    assert str(tmp_path / "ckpt") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_finite_extremes_still_load(tmp_path: Path) -> None:
    manifest = _manifest(
        preprocessing=Preprocessing(mean=(-3.5,), std=(1e-300,)),
        metrics={"val_accuracy": 0.0, "val_loss": 1e300, "steps": 7},
        train_config={"lr": 1e-30, "warmup_fraction": 0.0},
    )
    path = save_checkpoint(tmp_path / "ckpt", state_dict=_model().state_dict(), manifest=manifest)
    loaded = load_checkpoint(path).manifest
    assert loaded.metrics == {"val_accuracy": 0.0, "val_loss": 1e300, "steps": 7.0}
    assert loaded.preprocessing == manifest.preprocessing


@pytest.mark.parametrize("kind", ["file", "foreign directory"])
def test_something_else_at_the_target_is_not_replaced(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "ckpt"
    if kind == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        _save(target, _model())
    assert _siblings(target) == []


# --- atomic replacement ---------------------------------------------------------------


def test_overwriting_replaces_the_checkpoint(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    torch.manual_seed(1)
    newer = _model()
    save_checkpoint(path, state_dict=newer.state_dict(), manifest=_manifest(epoch=4))

    loaded = load_checkpoint(path)
    assert loaded.manifest.epoch == 4
    for name, tensor in newer.state_dict().items():
        assert torch.equal(loaded.state_dict[name], tensor)
    assert _siblings(path) == []


def test_an_empty_directory_at_the_target_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    _save(target, _model())
    verify_checkpoint(target)


def _assert_previous_checkpoint_intact(path: Path, model: torch.nn.Module) -> None:
    loaded = load_checkpoint(path)
    assert loaded.manifest.epoch == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict[name], tensor)
    assert _siblings(path) == []


class _SimulatedCrashError(Exception):
    """Stands in for a failure in the middle of a save."""


def test_crash_while_writing_a_new_checkpoint_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise _SimulatedCrashError

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(_SimulatedCrashError):
        _save(tmp_path / "ckpt", _model())
    assert list(tmp_path.iterdir()) == []


def test_crash_while_writing_keeps_the_previous_checkpoint(
    saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model = saved
    real_save_file = safetensors.torch.save_file

    def write_half_then_crash(tensors: dict[str, torch.Tensor], filename: Path, **_: Any) -> None:
        real_save_file(tensors, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:50])
        raise _SimulatedCrashError

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_crash)
    with pytest.raises(_SimulatedCrashError):
        save_checkpoint(path, state_dict=_model().state_dict(), manifest=_manifest(epoch=9))
    _assert_previous_checkpoint_intact(path, model)


@pytest.mark.parametrize("failing_rename", ["old aside", "new into place"])
def test_crash_while_renaming_keeps_the_previous_checkpoint(
    saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch, failing_rename: str
) -> None:
    path, model = saved
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        moving_old = Path(src) == path
        moving_new = Path(src).name.startswith(".ckpt.tmp-")
        if (failing_rename == "old aside" and moving_old) or (
            failing_rename == "new into place" and moving_new
        ):
            raise _SimulatedCrashError
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_SimulatedCrashError):
        save_checkpoint(path, state_dict=_model().state_dict(), manifest=_manifest(epoch=9))
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(path, model)


# --- train state ----------------------------------------------------------------------

OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

TOTAL_STEPS = 8
STEPS_BEFORE_SAVE = 3


def _one_cycle(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=TOTAL_STEPS)


def _lambda_decay(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05),
    "sgd_momentum": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
}
SCHEDULERS: dict[str, SchedulerFactory] = {"one_cycle": _one_cycle, "lambda": _lambda_decay}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(8, *INPUT_SHAPE, generator=generator),
            torch.randint(0, len(CLASS_NAMES), (8,), generator=generator),
        )
        for _ in range(TOTAL_STEPS)
    ]


def _train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    model.train()
    for images, labels in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("scheduler_name", SCHEDULERS)
@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_resumed_training_is_bit_identical(
    tmp_path: Path, optimizer_name: str, scheduler_name: str
) -> None:
    torch.manual_seed(0)
    batches = _batches()
    model = _model()
    optimizer = OPTIMIZERS[optimizer_name](model)
    scheduler = SCHEDULERS[scheduler_name](optimizer)
    _train(model, optimizer, scheduler, batches[:STEPS_BEFORE_SAVE])
    train_state = TrainState(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=1,
        extra={"best_val_accuracy": 0.5, "history": [0.25, 0.5]},
    )
    path = save_checkpoint(
        tmp_path / "ckpt",
        state_dict=model.state_dict(),
        manifest=_manifest(),
        train_state=train_state,
    )
    _train(model, optimizer, scheduler, batches[STEPS_BEFORE_SAVE:])

    loaded = load_checkpoint(path, with_train_state=True)
    assert loaded.train_state is not None
    resumed = build_from_checkpoint(loaded)
    resumed_optimizer = OPTIMIZERS[optimizer_name](resumed)
    resumed_scheduler = SCHEDULERS[scheduler_name](resumed_optimizer)
    resumed_optimizer.load_state_dict(loaded.train_state.optimizer)
    assert loaded.train_state.scheduler is not None
    resumed_scheduler.load_state_dict(loaded.train_state.scheduler)
    _train(resumed, resumed_optimizer, resumed_scheduler, batches[STEPS_BEFORE_SAVE:])

    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert loaded.train_state.epoch == 1
    assert loaded.train_state.extra == {"best_val_accuracy": 0.5, "history": [0.25, 0.5]}


def _assert_same_structure(actual: Any, expected: Any) -> None:
    """Equal values and equal container types, with tensors compared exactly."""
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _assert_same_structure(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_same_structure(a, e)
    else:
        assert actual == expected


def _load_train_state(path: Path) -> TrainState:
    train_state = load_checkpoint(path, with_train_state=True).train_state
    assert train_state is not None
    return train_state


def test_train_state_round_trips_types_exactly(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    model(torch.rand(2, *INPUT_SHAPE)).sum().backward()
    optimizer.step()
    extra = {"tag": "x", 7: None, "__tensor__": "a user key that looks like a marker"}
    state = TrainState(optimizer=optimizer.state_dict(), scheduler=None, epoch=2, extra=extra)
    path = _save(tmp_path / "ckpt", model, train_state=state)

    restored = _load_train_state(path)
    _assert_same_structure(restored.optimizer, optimizer.state_dict())
    assert restored.scheduler is None
    assert restored.extra == extra


def test_train_state_tensors_are_named_by_their_place(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, *INPUT_SHAPE)).sum().backward()
    optimizer.step()
    state = TrainState(optimizer=optimizer.state_dict(), scheduler=None, epoch=1, extra={})
    path = _save(tmp_path / "ckpt", model, train_state=state)

    names = safetensors.torch.load_file(path / ckpt.TRAIN_STATE_FILE).keys()
    assert "optimizer.state.0.momentum_buffer" in names


def test_functions_in_scheduler_state_are_left_out(tmp_path: Path) -> None:
    scheduler_state = {"last_epoch": 3, "anneal_func": abs}
    state = TrainState(optimizer={}, scheduler=scheduler_state, epoch=0, extra={})
    path = _save(tmp_path / "ckpt", _model(), train_state=state)
    assert _load_train_state(path).scheduler == {"last_epoch": 3}


def test_unsupported_train_state_value_is_refused(tmp_path: Path) -> None:
    state = TrainState(optimizer={}, scheduler=None, epoch=0, extra={"when": object()})
    with pytest.raises(CheckpointError, match=r"extra\.when"):
        _save(tmp_path / "ckpt", _model(), train_state=state)
    assert list(tmp_path.iterdir()) == []


def test_tampered_train_state_fails_the_hash_check(tmp_path: Path) -> None:
    state = TrainState(optimizer={}, scheduler=None, epoch=0, extra={"best": 1.0})
    path = _save(tmp_path / "ckpt", _model(), train_state=state)
    assert read_manifest(path).train_state_sha256 is not None
    train_file = path / ckpt.TRAIN_STATE_FILE
    train_file.write_bytes(train_file.read_bytes() + b" ")

    # The weights alone are still fine to serve.
    load_checkpoint(path)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_checkpoint(path, with_train_state=True)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        verify_checkpoint(path)


def test_unrecorded_train_state_file_is_rejected(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    safetensors.torch.save_file({"x": torch.zeros(1)}, path / ckpt.TRAIN_STATE_FILE)
    with pytest.raises(CheckpointError, match="not recorded"):
        load_checkpoint(path, with_train_state=True)


def test_checkpoint_without_train_state_loads_none_when_asked(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    loaded: LoadedCheckpoint = load_checkpoint(path, with_train_state=True)
    assert loaded.train_state is None


# --- no code execution on load --------------------------------------------------------


def test_checkpoint_package_never_unpickles() -> None:
    # torch.load and torch.save pickle; safetensors.torch.load does not, so look at the
    # syntax trees rather than grepping the text.
    sources = sorted(Path(ckpt.__file__).parent.glob("*.py"))
    assert len(sources) > 1  # the package's modules, not only its __init__
    nodes = [node for source in sources for node in ast.walk(ast.parse(source.read_text()))]
    imported: set[str] = set()
    torch_calls: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            torch_calls.add(node.attr)
    assert not imported & {"pickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal"}
    assert not torch_calls & {"load", "save"}


def test_the_saved_line_logs_at_the_callers_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The training loop saves every epoch at DEBUG; the final checkpoint stays at INFO.
    lines: list[tuple[int, str]] = []
    monkeypatch.setattr(
        store.logger, "log", lambda level, msg, *args: lines.append((level, msg % args))
    )
    _save(tmp_path / "epoch", _model(), log_level=logging.DEBUG)
    _save(tmp_path / "final", _model())
    assert [level for level, _ in lines] == [logging.DEBUG, logging.INFO]
    assert lines[1][1] == f"saved checkpoint {tmp_path / 'final'} (epoch 3)"
