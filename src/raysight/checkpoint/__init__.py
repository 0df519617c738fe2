"""Checkpoints: the contract between training and serving.

A checkpoint is a directory holding

* ``model.safetensors``: the model's state_dict;
* ``manifest.json``: everything needed to rebuild and serve the model (``Manifest``),
  including the sha256 of each tensor file;
* ``train_state.safetensors`` (optional): optimizer and scheduler state for resuming.

Nothing is pickled, so loading a checkpoint cannot run code. Saving is atomic: the files are
written to a hidden sibling directory and renamed onto the target, so the target path only
ever holds a complete checkpoint. An object store has no rename: there the manifest is
uploaded last, and a checkpoint without one never loads.

The modules, each importing only those listed before it:

* ``fields``: strict readers for the JSON values of the manifest and the train state;
* ``files``: fsync, sha256 and safetensors bytes, without pickle;
* ``manifest``: the manifest's schema, format versions and validation (no torch);
* ``train_state``: the train state and its encoding as tensors plus JSON metadata;
* ``store``: save, read, verify and load checkpoints, and rebuild their models;
* ``remote``: save a checkpoint at, read its manifest from or copy it from a local directory
  or an object-store URI (s3://, gs://).
"""

from raysight.checkpoint.manifest import FORMAT_VERSION, Manifest, ParentCheckpoint, Preprocessing
from raysight.checkpoint.remote import (
    check_destination,
    copy_checkpoint,
    manifest_sha256,
    publish_checkpoint,
    read_manifest_at,
)
from raysight.checkpoint.store import (
    MANIFEST_FILE,
    TRAIN_STATE_FILE,
    WEIGHTS_FILE,
    LoadedCheckpoint,
    build_from_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
)
from raysight.checkpoint.train_state import TrainState

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "TRAIN_STATE_FILE",
    "WEIGHTS_FILE",
    "LoadedCheckpoint",
    "Manifest",
    "ParentCheckpoint",
    "Preprocessing",
    "TrainState",
    "build_from_checkpoint",
    "check_destination",
    "copy_checkpoint",
    "load_checkpoint",
    "manifest_sha256",
    "publish_checkpoint",
    "read_manifest",
    "read_manifest_at",
    "save_checkpoint",
    "verify_checkpoint",
]
