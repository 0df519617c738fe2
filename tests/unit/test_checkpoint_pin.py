"""Pinning a checkpoint by its manifest's sha256: refused bytes, accepted bytes, the digest."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from raysight.checkpoint import (
    MANIFEST_FILE,
    load_checkpoint,
    manifest_sha256,
    read_manifest,
    verify_checkpoint,
)
from raysight.errors import CheckpointError
from tests.unit.test_checkpoint import _model, _save


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return _save(tmp_path / "ckpt", _model())


def test_the_pin_is_the_sha256_of_the_manifest_file(checkpoint: Path) -> None:
    digest = hashlib.sha256((checkpoint / MANIFEST_FILE).read_bytes()).hexdigest()
    assert manifest_sha256(checkpoint) == digest
    for read in (read_manifest, verify_checkpoint):
        assert read(checkpoint, expected_sha256=digest).model == "convnet"
        assert read(checkpoint, expected_sha256=digest.upper()).model == "convnet"
    assert load_checkpoint(checkpoint, expected_sha256=digest).manifest.model == "convnet"


def test_other_bytes_at_the_pinned_path_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    pin = manifest_sha256(checkpoint)
    # Retrained into the same path: a valid checkpoint, but not the pinned one.
    shutil.rmtree(checkpoint)
    torch.manual_seed(1)
    _save(checkpoint, _model())
    for read in (read_manifest, verify_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as error:
            read(checkpoint, expected_sha256=pin)
        message = str(error.value)
        assert f"not the pinned {pin}" in message and manifest_sha256(checkpoint) in message


def test_an_edited_manifest_breaks_the_pin_even_with_the_same_weights(checkpoint: Path) -> None:
    pin = manifest_sha256(checkpoint)
    manifest_file = checkpoint / MANIFEST_FILE
    data = json.loads(manifest_file.read_text())
    data["class_names"] = list(reversed(data["class_names"]))  # same weights, other labels
    manifest_file.write_text(json.dumps(data, indent=2) + "\n")
    assert read_manifest(checkpoint).class_names == tuple(data["class_names"])  # no pin: loads
    with pytest.raises(CheckpointError, match="not the pinned"):
        load_checkpoint(checkpoint, expected_sha256=pin)
