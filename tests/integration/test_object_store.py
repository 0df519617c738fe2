"""Datasets on s3://, read through pyarrow.fs from a local S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raysight.data import imagefolder, load_arrays
from raysight.errors import DataError
from tests.builders import encode_image, idx_bytes

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
    from raysight.errors import CheckpointError
    from raysight.serve.model import load_served_model

    with pytest.raises(CheckpointError, match="nowhere"):
        load_served_model(f"s3://{bucket}/nowhere", "", "cpu")
