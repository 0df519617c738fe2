"""Datasets and checkpoints on s3://, through pyarrow.fs, against a local S3 server (moto)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import pytest

from raysight.checkpoint import (
    MANIFEST_FILE,
    TRAIN_STATE_FILE,
    WEIGHTS_FILE,
    LoadedCheckpoint,
    check_destination,
    load_checkpoint,
    manifest_sha256,
    publish_checkpoint,
)
from raysight.config import TrainConfig
from raysight.data import imagefolder, load_arrays
from raysight.errors import CheckpointError, DataError
from tests.builders import encode_image, idx_bytes
from tests.conftest import RayCluster

pytestmark = pytest.mark.integration

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def bucket() -> Iterator[str]:
    """A bucket named "data" on a local S3 endpoint; AWS_* variables point pyarrow at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_REGION", "us-east-1")
        boto3.client("s3").create_bucket(Bucket="data")
        try:
            yield "data"
        finally:
            server.stop()


def _put(bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def test_mnist_files_on_s3(bucket: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=30, dtype=np.uint8)
    _put(bucket, "mnist/train-images-idx3-ubyte", idx_bytes(images, 0x803))
    _put(bucket, "mnist/train-labels-idx1-ubyte", idx_bytes(labels, 0x801))

    split = load_arrays("mnist", f"s3://{bucket}/mnist", "train")
    assert split.images.shape == (30, 1, 28, 28)
    assert np.array_equal(split.images[:, 0], images)
    assert np.array_equal(split.labels, labels.astype(np.int64))


def test_missing_object_is_named(bucket: str) -> None:
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_arrays("mnist", f"s3://{bucket}/mnist", "test")


def test_image_folder_on_s3(bucket: str) -> None:
    for name, value in (("cat", 30), ("dog", 220)):
        for i in range(3):
            pixels = np.full((20, 24, 3), value, dtype=np.uint8)
            _put(bucket, f"pets/train/{name}/{i}.png", encode_image(pixels, "PNG"))

    index = imagefolder.scan(f"s3://{bucket}/pets", "train")
    assert index.class_names == ("cat", "dog")
    assert all(p.startswith(f"s3://{bucket}/pets/train/") for p in index.paths)
    split = imagefolder.load_arrays(index, (16, 16), 3)
    assert split.images.shape == (6, 3, 16, 16)
    # Dark images are the cats, bright ones the dogs.
    assert set(split.labels[split.images.mean(axis=(1, 2, 3)) < 128]) == {0}


def test_serving_loads_a_checkpoint_from_s3(bucket: str, tmp_path: Path) -> None:
    from raysight.serve.model import load_served_model
    from tests.integration.serving import digits_checkpoint

    local = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=1)
    for file in local.iterdir():
        _put(bucket, f"models/digits/{file.name}", file.read_bytes())

    served = load_served_model(f"s3://{bucket}/models/digits", "", "cpu")
    assert served.name == "convnet-digits"
    assert served.input_shape == (1, 8, 8)
    pixels = np.zeros((2, 1, 8, 8), np.uint8)
    assert served.run(served.engine.normalize(pixels))["probabilities"].shape == (2, 10)


def test_a_missing_s3_checkpoint_is_a_checkpoint_error(bucket: str) -> None:
    from raysight.serve.model import load_served_model

    with pytest.raises(CheckpointError, match="nowhere"):
        load_served_model(f"s3://{bucket}/nowhere", "", "cpu")


# --- checkpoints written to s3:// -----------------------------------------------------


def _keys(bucket: str, prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _digits_checkpoint(directory: Path) -> LoadedCheckpoint:
    from tests.integration.serving import digits_checkpoint

    return load_checkpoint(digits_checkpoint(directory, seed=0, epochs=1))


def _publish(loaded: LoadedCheckpoint, uri: str) -> str:
    return publish_checkpoint(uri, state_dict=loaded.state_dict, manifest=loaded.manifest)


def _served(uri: str) -> Any:
    from raysight.serve.model import load_served_model

    return load_served_model(uri, "", "cpu")


def test_a_checkpoint_published_to_s3_is_served_from_there(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _digits_checkpoint(tmp_path / "local")
    uploaded: list[str] = []
    copy_files = pyarrow.fs.copy_files

    def record(source: str, destination: str, **kwargs: Any) -> None:
        uploaded.append(destination.rsplit("/", 1)[-1])
        copy_files(source, destination, **kwargs)

    monkeypatch.setattr(pyarrow.fs, "copy_files", record)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see that staging is removed
    uri = f"s3://{bucket}/runs/published"
    check_destination(uri)
    assert _publish(loaded, uri) == uri

    assert uploaded == [WEIGHTS_FILE, MANIFEST_FILE]  # the manifest, which makes it load, last
    assert _keys(bucket, "runs/published/") == [
        f"runs/published/{MANIFEST_FILE}",
        f"runs/published/{WEIGHTS_FILE}",
    ]
    served = _served(uri)
    assert served.engine.manifest == loaded.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]
    # The pin of what was uploaded, read where it lies, and serving it pinned.
    pin = manifest_sha256(uri)
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"runs/published/{MANIFEST_FILE}")
    assert pin == hashlib.sha256(body["Body"].read()).hexdigest()
    from raysight.serve.model import load_served_model
    from raysight.serve.settings import CheckpointTrust

    assert (
        load_served_model(uri, "", "cpu", CheckpointTrust(sha256=pin)).engine.manifest
        == loaded.manifest
    )
    with pytest.raises(CheckpointError, match="not the pinned"):
        load_served_model(uri, "", "cpu", CheckpointTrust(sha256="0" * 64))


def test_publishing_replaces_a_checkpoint_and_its_stray_files(bucket: str, tmp_path: Path) -> None:
    loaded = _digits_checkpoint(tmp_path / "local")
    uri = f"s3://{bucket}/runs/replaced"
    _publish(loaded, uri)
    # A file the new checkpoint does not list would make it fail verification.
    _put(bucket, f"runs/replaced/{TRAIN_STATE_FILE}", b"from an older checkpoint")
    newer = dataclasses.replace(loaded.manifest, epoch=7)
    check_destination(uri)
    publish_checkpoint(uri, state_dict=loaded.state_dict, manifest=newer)

    assert TRAIN_STATE_FILE not in " ".join(_keys(bucket, "runs/replaced/"))
    assert _served(uri).engine.manifest.epoch == 7


def test_a_prefix_holding_something_else_is_not_replaced(bucket: str, tmp_path: Path) -> None:
    _put(bucket, "photos/cat.png", b"not a checkpoint")
    loaded = _digits_checkpoint(tmp_path / "local")
    for attempt in (check_destination, partial(_publish, loaded)):
        with pytest.raises(CheckpointError, match="is not empty and is not a checkpoint"):
            attempt(f"s3://{bucket}/photos")
    assert _keys(bucket, "photos/") == ["photos/cat.png"]


def test_a_missing_bucket_is_refused_before_any_work() -> None:
    with pytest.raises(CheckpointError, match="s3://no-such-bucket/x: bucket 'no-such-bucket'"):
        check_destination("s3://no-such-bucket/x")


def test_a_failed_upload_leaves_nothing_that_loads_and_keeps_the_local_copy(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _digits_checkpoint(tmp_path / "local")
    copy_files = pyarrow.fs.copy_files

    def fail_on_the_manifest(source: str, destination: str, **kwargs: Any) -> None:
        if destination.endswith(MANIFEST_FILE):
            raise OSError("connection reset")
        copy_files(source, destination, **kwargs)

    monkeypatch.setattr(pyarrow.fs, "copy_files", fail_on_the_manifest)
    uri = f"s3://{bucket}/runs/interrupted"
    with pytest.raises(CheckpointError, match="cannot upload the checkpoint") as info:
        _publish(loaded, uri)
    kept = str(info.value).rsplit("the checkpoint is kept at ", 1)[1]
    try:
        assert load_checkpoint(kept).manifest == loaded.manifest
        assert _keys(bucket, "runs/interrupted/") == [f"runs/interrupted/{WEIGHTS_FILE}"]
        with pytest.raises(CheckpointError, match="manifest missing"):
            _served(uri)
    finally:
        shutil.rmtree(Path(kept).parent)


@pytest.mark.slow
def test_training_writes_its_checkpoint_to_s3(
    bucket: str, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    from raysight.train.trainer import train

    uri = f"s3://{bucket}/runs/trained"
    cfg = TrainConfig(
        dataset="digits",
        model="convnet",
        model_args={"padding": "same"},
        epochs=1,
        batch_size=32,
        workers=1,
        max_failures=0,
        output=uri,
        storage_path=str(tmp_path / "storage"),
    )
    outcome = train(cfg)

    assert outcome.checkpoint == uri
    assert not Path("s3:").exists()  # once, the URI became a local folder of that name
    manifest = _served(uri).engine.manifest
    assert manifest.epoch == outcome.manifest.epoch == 1
    assert manifest.metrics == outcome.manifest.metrics
    assert manifest.metrics["test_accuracy"] == outcome.test.accuracy
