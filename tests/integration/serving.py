"""Helpers for the serving tests: small real checkpoints and a served application."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from raysight.checkpoint import Manifest, Preprocessing, save_checkpoint
from raysight.data import load_arrays
from raysight.data.transforms import channel_stats
from raysight.models import build_model, resolve_kwargs
from raysight.serve.runner import APP_NAME
from raysight.train.feeds import ArrayFeed
from raysight.train.step import Preparation, Stepper, build_optimizer


def serve_argv(checkpoint: Path, grpc_port: int, metrics_port: int, http_port: int) -> list[str]:
    """The `raysight serve` console script's command line for `checkpoint` on these ports."""
    return [
        str(Path(sys.executable).parent / "raysight"),
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
    ]


def digits_checkpoint(directory: Path, seed: int, epochs: int = 4) -> Path:
    """Fit the convnet on the 8x8 digits for a few epochs (seconds) and save a checkpoint."""
    return fitted_checkpoint(directory, "digits", None, seed=seed, epochs=epochs)


def fitted_checkpoint(
    directory: Path,
    dataset: str,
    data_dir: Path | None,
    *,
    seed: int,
    epochs: int,
    samples: int | None = None,
) -> Path:
    """Fit the convnet on (the first `samples` images of) a dataset's training split, in
    this process, and save a checkpoint."""
    torch.manual_seed(seed)
    train = load_arrays(dataset, str(data_dir) if data_dir else None, "train")
    images, labels = train.images[:samples], train.labels[:samples]  # (N, C, H, W) uint8
    mean, std = channel_stats(images)
    shape = tuple(int(d) for d in images.shape[1:])
    kwargs = resolve_kwargs(
        "convnet", in_channels=shape[0], num_classes=10, image_size=shape[1:], padding="same"
    )
    model = build_model("convnet", **kwargs)
    optimizer = build_optimizer(model, "adamw", 3e-3, 5e-4, 0.9)
    prep = Preparation(mean, std, crop_padding=0, flip=False, channels_last=False)
    stepper = Stepper(model, optimizer, torch.device("cpu"), prep, seed=seed)
    feed = ArrayFeed(images, labels, rank=0, world=1, batch_size=64, train=True, seed=seed)
    for epoch in range(epochs):
        stepper.train_epoch(feed.epoch(epoch), lambda _: 3e-3, 0)
    manifest = Manifest.new(
        model="convnet",
        model_kwargs=kwargs,
        input_shape=shape,
        preprocessing=Preprocessing(mean=mean, std=std),
        class_names=train.class_names,
        dataset=dataset,
        metrics={},
        train_config={"seed": seed},
        epoch=epochs,
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_checkpoint(directory, state_dict=state, manifest=manifest)


def untrained_checkpoint(directory: Path, model: str, shape: tuple[int, int, int]) -> Path:
    """A registry model with its initial weights, for tests that need a pass to take time
    (a ResNet-18 at 64x64 is about 0.1 s an image on one of this machine's cores)."""
    torch.manual_seed(0)
    kwargs = resolve_kwargs(model, in_channels=shape[0], num_classes=10, image_size=shape[1:])
    network = build_model(model, **kwargs)
    manifest = Manifest.new(
        model=model,
        model_kwargs=kwargs,
        input_shape=shape,
        preprocessing=Preprocessing(mean=[0.5] * shape[0], std=[0.25] * shape[0]),
        class_names=[str(i) for i in range(10)],
        dataset="untrained",
        metrics={},
        train_config={"seed": 0},
        epoch=0,
    )
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return save_checkpoint(directory, state_dict=state, manifest=manifest)


def png(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_serving(target: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll gRPC health on `target` until SERVING, failing if `process` exits first."""
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve run exited early"
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(1)
    raise AssertionError(f"{target} never reported SERVING")


def stop_serve(dashboard_url: str, timeout: float = 120) -> None:
    """Shut Serve down on the connected cluster and wait until its controller is gone.

    `serve.shutdown()` may return while the controller is still stopping, and the next test
    module starts Serve afresh with ports of its own: it must find none running.
    """
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from raysight.serve import runner

    serve.shutdown()
    client = ServeSubmissionClient(dashboard_url)
    deadline = time.monotonic() + timeout
    while runner.serve_running(client.get_serve_details()):
        assert time.monotonic() < deadline, f"Serve did not shut down within {timeout:.0f}s"
        time.sleep(1)


def haproxy_routes_directly(
    dashboard_url: str, stats_port: int = 8404, timeout: float = 60
) -> float:
    """Wait until HAProxy sends raysight's gRPC straight to the running replicas, each up and
    none other; returns the seconds waited.

    After a deployment update HAProxy routes through Serve's proxy (its backup server) until
    the new replicas pass HAProxy's health check, and its stats may still list the old ones
    for a moment; a long stream opened in that window stays on the proxy path for its life.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(dashboard_url)
    backend = f"grpc-{APP_NAME}"  # Serve names a gRPC backend <protocol>-<application>
    start = time.monotonic()
    while True:
        deployments = client.get_serve_details()["applications"][APP_NAME]["deployments"]
        running = {
            replica["replica_id"]
            for deployment in deployments.values()
            for replica in deployment["replicas"]
            if replica["state"] == "RUNNING"
        }
        url = f"http://127.0.0.1:{stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as reply:
            rows = list(csv.DictReader(reply.read().decode().lstrip("# ").splitlines()))
        # Server names end with the replica's id; the backup (Serve's proxy) is bck=1.
        direct = {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == backend and row["svname"] != "BACKEND" and row["bck"] == "0"
        }
        ids = {name.rsplit("-", 1)[-1] for name in direct}
        if running and ids == running and all(s == "UP" for s in direct.values()):
            return time.monotonic() - start
        assert time.monotonic() < start + timeout, f"replicas {running}, HAProxy {direct}"
        time.sleep(0.5)
