"""Ray Serve over gRPC, end to end: tritonclient (an independent OIP client), the image API,
health, reflection, errors, a checkpoint swap under traffic, and the metrics endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.checkpoint import manifest_sha256
from raysight.checkpoint.signing import sign_checkpoint
from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import DEFAULT_MAX_MESSAGE_BYTES, ServeSettings
from tests.conftest import INGRESS, RayCluster, free_port, scrape_metrics
from tests.integration.serving import (
    digits_checkpoint,
    haproxy_routes_directly,
    png,
    stop_serve,
    untrained_checkpoint,
)
from tests.keys import key_pair

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"


class Served:
    """The application under test and what it serves."""

    def __init__(
        self, port: int, http_port: int, checkpoints: list[Path], settings: ServeSettings
    ) -> None:
        self.target = f"127.0.0.1:{port}"
        self.port, self.http_port = port, http_port
        self.checkpoints = checkpoints
        self.settings = settings
        self.engine = Engine.from_directory(checkpoints[0])
        self.version = self.engine.manifest.weights_sha256[:12]

    def swap(
        self,
        checkpoint: Path,
        pin: str = "",
        trust: dict[str, Any] | None = None,
        **deployment: int,
    ) -> None:
        """Apply a checkpoint, pinned or not, trusting signers or not (and deployment
        options) through the Serve config, as a RayService update does."""
        settings = ServeSettings.from_dict(
            {
                **self.settings.to_dict(),
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": pin,
                **(trust or {}),
            }
        )
        config = runner.serve_config(
            settings, grpc_port=self.port, http_port=self.http_port, **deployment
        )
        runner.deploy(config)

    def triton(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.target)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


@pytest.fixture(scope="module")
def served(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:

    root = tmp_path_factory.mktemp("serving")
    checkpoints = [digits_checkpoint(root / f"seed{seed}", seed=seed) for seed in (0, 1)]
    settings = ServeSettings(checkpoint=str(checkpoints[0]), max_batch_size=16)
    port, http_port = free_port(), free_port()
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=http_port))
        yield Served(port, http_port, checkpoints, settings)
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_arrays("digits", None, "test")
    return split.images[:n], split.labels[:n]


def test_live_ready_and_metadata(served: Served) -> None:
    client = served.triton()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, served.version)
    metadata = client.get_model_metadata(MODEL)
    assert metadata.name == MODEL
    assert list(metadata.versions) == [served.version]
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("images", "FP32", [-1, 1, 8, 8])
    ]
    assert [o.name for o in metadata.outputs] == ["logits", "probabilities"]
    server = client.get_server_metadata()
    assert server.name == "raysight"


def test_model_config_index_and_statistics(served: Served) -> None:
    client = served.triton()
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [1, 8, 8]  # batch dimension left out, as in Triton
    assert config.input[0].data_type == triton.model_config_pb2.TYPE_FP32
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (MODEL, served.version, "READY")
    ]
    images, _ = _test_images(4)
    _infer(client, images.astype(np.float32) / 255)  # at least one inference counted
    stats = client.get_inference_statistics(MODEL).model_stats[0]
    assert stats.name == MODEL
    assert stats.inference_stats.success.count >= 1
    assert stats.inference_count >= 4


def _infer(
    client: triton.InferenceServerClient, batch: np.ndarray, model: str = MODEL, **kwargs: object
) -> dict:
    datatype = "UINT8" if batch.dtype == np.uint8 else "FP32"
    tensor = triton.InferInput("images", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    result = client.infer(model, [tensor], **kwargs)
    return {name: result.as_numpy(name) for name in ("logits", "probabilities")}


def test_model_infer_matches_the_in_process_model(served: Served) -> None:
    images, labels = _test_images(12)
    normalised = served.engine.normalize(images)  # (12, 1, 8, 8) float32
    expected = served.engine.logits(normalised)
    client = served.triton()

    fp32 = _infer(client, normalised)
    np.testing.assert_allclose(fp32["logits"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fp32["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # Raw pixels are normalised by the server with the checkpoint's preprocessing.
    uint8 = _infer(client, images)
    np.testing.assert_allclose(uint8["logits"], expected, rtol=1e-5, atol=1e-5)
    assert (uint8["logits"].argmax(1) == labels).mean() >= 0.75


def test_model_infer_takes_image_files_as_bytes(served: Served) -> None:
    # One PNG file a row in a BYTES tensor, as tritonclient sends it: decoded as Classify
    # decodes, so the answers are the model's for the same pixels.
    images, _ = _test_images(6)
    expected = served.engine.classify_pixels(images)
    client = served.triton()
    files = triton.InferInput("images", [6], "BYTES")
    files.set_data_from_numpy(np.array([png(image[0]) for image in images], dtype=object))
    logits = client.infer(MODEL, [files]).as_numpy("logits")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # A file that is no image fails its request, naming its row; no traceback leaves.
    files = triton.InferInput("images", [2, 1], "BYTES")
    files.set_data_from_numpy(np.array([[png(images[0][0])], [b"GIF89a no"]], dtype=object))
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL, [files])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert 'inputs "images" item 1: image:' in error.value.message()
    assert "Traceback" not in error.value.message()


def test_model_stream_infer(served: Served) -> None:
    images, _ = _test_images(6)
    expected = served.engine.classify_pixels(images)
    results: list[tuple[object, object]] = []
    done = threading.Event()

    def callback(result: object, error: object) -> None:
        results.append((result, error))
        if len(results) == 3:
            done.set()

    client = served.triton()
    client.start_stream(callback=callback)
    try:
        for i in range(2):
            tensor = triton.InferInput("images", [3, 1, 8, 8], "UINT8")
            tensor.set_data_from_numpy(images[3 * i : 3 * i + 3])
            client.async_stream_infer(MODEL, [tensor], request_id=f"r{i}")
        bad = triton.InferInput("images", [1, 1, 9, 9], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 1, 9, 9), np.uint8))
        client.async_stream_infer(MODEL, [bad], request_id="bad")
        assert done.wait(60)
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r.as_numpy("logits") for r, e in results if e is None}
    errors = [e for _, e in results if e is not None]
    np.testing.assert_allclose(ok["r0"], expected[:3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ok["r1"], expected[3:], rtol=1e-5, atol=1e-5)
    assert len(errors) == 1
    assert "shape" in str(errors[0])


def test_classify_png_returns_the_checkpoints_labels(served: Served) -> None:
    images, labels = _test_images(8)
    stub = image_grpc.ImageServiceStub(served.channel())
    correct = 0
    for image, label in zip(images, labels, strict=True):
        reply = stub.Classify(image_pb.ClassifyRequest(image=png(image[0]), top_k=3))
        assert len(reply.predictions) == 3
        assert reply.model_name == MODEL
        assert reply.model_version == served.version
        assert {p.label for p in reply.predictions} <= {str(d) for d in range(10)}
        scores = [p.score for p in reply.predictions]
        assert scores == sorted(scores, reverse=True)
        correct += reply.predictions[0].label == str(label)
    assert correct >= 6


def test_classify_stream_reports_a_bad_image_and_goes_on(served: Served) -> None:
    images, _ = _test_images(2)
    stub = image_grpc.ImageServiceStub(served.channel())
    requests = [
        image_pb.ClassifyRequest(image=png(images[0][0]), request_id="a"),
        image_pb.ClassifyRequest(image=b"not an image", request_id="b"),
        image_pb.ClassifyRequest(image=png(images[1][0]), request_id="c"),
    ]
    # Answered in completion order: matched by request_id.
    replies = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=60)}
    assert sorted(replies) == ["a", "b", "c"]
    assert replies["a"].predictions and replies["c"].predictions
    assert not replies["b"].predictions
    assert "not a PNG, JPEG or WebP image" in replies["b"].error


def test_health_check_and_watch(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel())
    serving = health_pb2.HealthCheckResponse.SERVING
    assert stub.Check(health_pb2.HealthCheckRequest()).status == serving
    assert (
        stub.Check(health_pb2.HealthCheckRequest(service="raysight.v1.ImageService")).status
        == serving
    )
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(watch).status == serving
    watch.cancel()


def test_reflection_lists_and_describes_the_services(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel())
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="raysight.v1.ClassifyRequest"
        ),
    ]
    listed, inference_file, image_file = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "raysight.v1.ImageService",
        "grpc.health.v1.Health",
    } <= names
    assert inference_file.file_descriptor_response.file_descriptor_proto
    assert image_file.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize(
    ("build", "code", "words"),
    [
        (lambda: (np.zeros((2, 1, 9, 9), np.float32), {}), "INVALID_ARGUMENT", "shape"),
        (lambda: (np.zeros((17, 1, 8, 8), np.float32), {}), "INVALID_ARGUMENT", "16"),
        (lambda: (np.zeros((1, 1, 8, 8), np.float64), {}), "INVALID_ARGUMENT", "FP64"),
        (
            lambda: (np.zeros((1, 1, 8, 8), np.float32), {"model_version": "nope"}),
            "NOT_FOUND",
            "version",
        ),
    ],
    ids=["wrong-shape", "batch-over-max", "wrong-datatype", "unknown-version"],
)
def test_bad_inputs_get_their_code_and_the_server_keeps_answering(
    served: Served, build: object, code: str, words: str
) -> None:
    batch, kwargs = build()  # type: ignore[operator]
    client = served.triton()
    datatype = {np.float32: "FP32", np.float64: "FP64"}[batch.dtype.type]
    tensor = triton.InferInput("images", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL, [tensor], **kwargs)
    assert error.value.status() == f"StatusCode.{code}"
    assert words in error.value.message()
    assert "Traceback" not in error.value.message()
    images, _ = _test_images(2)
    assert _infer(client, images)["logits"].shape == (2, 10)


def test_unknown_model_and_bad_image_codes(served: Served) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        _infer_named(served.triton(), "no-such-model")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    stub = image_grpc.ImageServiceStub(served.channel())
    for payload, words in ((b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"x" * 40, "image")):
        with pytest.raises(grpc.RpcError) as bad:
            stub.Classify(image_pb.ClassifyRequest(image=payload))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in bad.value.details()
        assert "Traceback" not in bad.value.details()


def test_a_message_over_the_cap_is_refused_before_it_is_parsed(served: Served) -> None:
    stub = image_grpc.ImageServiceStub(served.channel())
    oversized = b"\x89PNG\r\n\x1a\n" + bytes(DEFAULT_MAX_MESSAGE_BYTES)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Classify(image_pb.ClassifyRequest(image=oversized), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.details()
    assert "Traceback" not in refused.value.details()
    images, _ = _test_images(2)
    assert _infer(served.triton(), images)["logits"].shape == (2, 10)


def _infer_named(client: triton.InferenceServerClient, name: str) -> None:
    tensor = triton.InferInput("images", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    client.infer(name, [tensor])


def test_checkpoint_swap_under_traffic_loses_no_request(served: Served, tmp_path: Path) -> None:
    images, _ = _test_images(4)
    client = served.triton()
    failures: list[BaseException] = []
    versions: set[str] = set()
    answered: Counter[str] = Counter()  # by the version that answered
    stop = threading.Event()

    def traffic() -> None:
        own = served.triton()
        while not stop.is_set():
            try:
                tensor = triton.InferInput("images", [4, 1, 8, 8], "UINT8")
                tensor.set_data_from_numpy(images)
                reply = own.infer(MODEL, [tensor], client_timeout=30)
                versions.add(reply.get_response().model_version)
                answered[reply.get_response().model_version] += 1
            except BaseException as exc:
                failures.append(exc)

    senders = [threading.Thread(target=traffic) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        time.sleep(1.0)
        new = Engine.from_directory(served.checkpoints[1]).manifest.weights_sha256[:12]
        served.swap(served.checkpoints[1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and new not in versions:
            time.sleep(0.2)
        # A bad checkpoint is refused and the good one keeps serving.
        broken = tmp_path / "broken"
        broken.mkdir()
        served.swap(broken)
        time.sleep(2.0)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        figures = {"answered_by_version": dict(answered), "failed": len(failures)}
        Path(out).write_text(json.dumps(figures, indent=2))
    assert not failures, failures[:3]
    assert {served.version, new} <= versions
    assert client.get_model_metadata(MODEL).versions == [new]
    # Back to the first checkpoint for the other tests.
    served.swap(served.checkpoints[0])
    deadline = time.monotonic() + 60
    while client.get_model_metadata(MODEL).versions != [served.version]:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _wait_for_model(client: triton.InferenceServerClient, model: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.is_model_ready(model):
                return
        except InferenceServerException:
            pass  # the other model still serves: NOT_FOUND
        assert time.monotonic() < deadline, f"{model} never served"
        time.sleep(0.2)


def _wait_for_version(client: triton.InferenceServerClient, version: str) -> None:
    deadline = time.monotonic() + 60
    while client.get_model_metadata(MODEL).versions != [version]:
        assert time.monotonic() < deadline, f"version {version} never served"
        time.sleep(0.2)


def test_a_pin_reloads_a_rewritten_path_and_refuses_other_bytes(
    served: Served, tmp_path: Path
) -> None:
    client = served.triton()
    first, second = served.checkpoints
    new = Engine.from_directory(second).manifest.weights_sha256[:12]
    live = tmp_path / "live"
    shutil.copytree(first, live)
    served.swap(live, pin=manifest_sha256(first))
    _wait_for_version(client, served.version)
    # Retrained into the same path. The same config changes nothing: the replicas keep
    # what they verified. A new pin reloads the path.
    shutil.rmtree(live)
    shutil.copytree(second, live)
    served.swap(live, pin=manifest_sha256(first))
    assert client.get_model_metadata(MODEL).versions == [served.version]
    served.swap(live, pin=manifest_sha256(second))
    _wait_for_version(client, new)
    # A pin the bytes do not match is refused; the verified model keeps answering.
    served.swap(live, pin=manifest_sha256(first))
    time.sleep(2.0)
    assert client.get_model_metadata(MODEL).versions == [new]
    _infer_named(client, MODEL)
    served.swap(first)
    _wait_for_version(client, served.version)


def test_a_required_signature_refuses_unsigned_checkpoints(served: Served, tmp_path: Path) -> None:
    client = served.triton()
    keys = key_pair(tmp_path)
    second = served.checkpoints[1]
    new = Engine.from_directory(second).manifest.weights_sha256[:12]
    unsigned = shutil.copytree(second, tmp_path / "unsigned")
    signed = shutil.copytree(second, tmp_path / "signed")
    sign_checkpoint(signed, keys.private)
    trust = {"signature_trust": str(keys.public), "require_signature": True}
    served.swap(unsigned, trust=trust)
    time.sleep(2.0)
    assert client.get_model_metadata(MODEL).versions == [served.version]  # refused: kept
    served.swap(signed, trust=trust)
    _wait_for_version(client, new)
    served.swap(served.checkpoints[0])
    _wait_for_version(client, served.version)


def test_metrics_endpoint_shows_serving_counters(served: Served, ray_cluster: RayCluster) -> None:
    images, _ = _test_images(3)
    client = served.triton()
    for _ in range(3):
        _infer(client, images)
    wanted = (
        "ray_raysight_requests_total{",
        "ray_raysight_request_duration_seconds_bucket{",
        "ray_raysight_images_total{",
        "ray_raysight_batch_size_bucket{",
        "ray_raysight_queue_wait_seconds_bucket{",
        "ray_raysight_compute_seconds_bucket{",
        "ray_raysight_model_info{",
        # Earlier tests in this module sent undecodable images.
        "ray_raysight_rejected_inputs_total{",
    )
    text = scrape_metrics(ray_cluster.metrics_port, lambda t: all(w in t for w in wanted))
    for name in wanted:
        assert name in text, name
    ok = [
        line
        for line in text.splitlines()
        if line.startswith("ray_raysight_requests_total{")
        and 'method="ModelInfer"' in line
        and 'code="OK"' in line
        # The swap test served another version briefly, maybe for a single request.
        and f'version="{served.version}"' in line
    ]
    assert ok
    assert float(ok[0].rsplit(" ", 1)[1]) >= 3
    assert "ray_serve_" in text  # Ray Serve's own metrics stay available
    rejected = [
        line for line in text.splitlines() if line.startswith("ray_raysight_rejected_inputs_total{")
    ]
    assert any('reason="not_an_image"' in line for line in rejected), rejected


def test_overload_is_resource_exhausted_and_passes(served: Served) -> None:
    """With room for one running and one queued request, a burst of 24 concurrent calls must
    get OK or RESOURCE_EXHAUSTED (clients back off and retry), nothing else."""
    served.swap(served.checkpoints[0], max_ongoing_requests=1, max_queued_requests=1)
    images, _ = _test_images(16)
    codes: list[str] = []
    details: list[str] = []

    def call() -> None:
        stub = image_grpc.ImageServiceStub(served.channel())
        try:
            stub.Classify(image_pb.ClassifyRequest(image=png(images[0][0])), timeout=60)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
            details.append(exc.details() or "")

    try:
        # The burst tests overload, not the swap: one call first, so the new replica answers.
        image_grpc.ImageServiceStub(served.channel()).Classify(
            image_pb.ClassifyRequest(image=png(images[0][0])), timeout=60
        )
        burst = [threading.Thread(target=call) for _ in range(24)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join()
    finally:
        served.swap(served.checkpoints[0])
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert "OK" in codes
    assert "RESOURCE_EXHAUSTED" in codes
    assert all("retry" in d or "backpressure" in d for d in details), details
    assert _infer(served.triton(), images[:2])["logits"].shape == (2, 10)


@pytest.mark.skipif(INGRESS != "haproxy", reason="the classic proxy routes health to replicas")
def test_health_watchers_hold_no_request_slots(served: Served, ray_cluster: RayCluster) -> None:
    """With room for one running and one queued request, three open Watch streams must
    leave both free: requests still pass, one after another."""
    served.swap(served.checkpoints[0], max_ongoing_requests=1, max_queued_requests=1)
    # A Watch opened while HAProxy still routes through Serve's proxy would hold a slot.
    haproxy_routes_directly(ray_cluster.dashboard_url)
    stub = health_pb2_grpc.HealthStub(served.channel())
    watchers = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(3)]
    images, _ = _test_images(2)
    try:
        for watch in watchers:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        client = served.triton()
        for _ in range(5):
            assert _infer(client, images)["logits"].shape == (2, 10)
    finally:
        for watch in watchers:
            watch.cancel()
        served.swap(served.checkpoints[0])


def test_image_client_classifies_many_on_one_stream(served: Served) -> None:
    from raysight.client import ImageClient

    images, labels = _test_images(4)
    payloads = [png(image[0]) for image in images]
    payloads.insert(2, b"broken")
    with ImageClient(served.target) as client:
        results = list(client.classify_many(payloads, top_k=2))
    assert len(results) == 5
    assert "not a PNG" in results[2].error
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(r.error == "" and len(r.labels) == 2 for r in good)
    assert all(r.model_version == served.version for r in good)
    assert sum(r.labels[0].label == str(y) for r, y in zip(good, labels, strict=True)) >= 3


@pytest.mark.skipif(INGRESS != "haproxy", reason="measured in the default ingress mode")
def test_a_request_whose_deadline_passes_while_queued_is_dropped_before_compute(
    served: Served, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """A request queued behind a long pass, with a deadline shorter than that pass, is
    answered DEADLINE_EXCEEDED and never computed: the dropped counter says so."""
    slow = untrained_checkpoint(tmp_path / "slow", "resnet18", (3, 96, 96))
    served.swap(slow)
    model = "resnet18-untrained"
    client = served.triton()
    rng = np.random.default_rng(0)
    full = rng.random((16, 3, 96, 96), np.float32)  # a pass of max_batch_size images
    try:
        _wait_for_model(client, model)
        _infer(client, full, model=model)  # warm-up: allocator, kernels
        started = time.perf_counter()
        _infer(client, full, model=model)
        pass_s = time.perf_counter() - started  # about 1 s here; the machine's speed varies
        long = threading.Thread(target=_infer, args=(client, full), kwargs={"model": model})
        long.start()
        time.sleep(pass_s / 4)  # sequencing: the long pass has begun
        # Queued behind it, with a deadline (3/4 of a pass after it began) before its end.
        one = rng.random((1, 3, 96, 96), np.float32)
        with pytest.raises(InferenceServerException) as late:
            _infer(client, one, model=model, client_timeout=pass_s / 2)
        long.join(timeout=120)
    finally:
        served.swap(served.checkpoints[0])
        _wait_for_model(client, MODEL)
    assert "Deadline" in str(late.value), late.value
    dropped = "ray_raysight_dropped_requests_total{"
    text = scrape_metrics(ray_cluster.metrics_port, lambda t: dropped in t)
    lines = text.splitlines()
    counted = [
        " ".join([*re.findall(r'(?:code|method|model)="[^"]*"', line), line.rsplit(" ", 1)[-1]])
        for line in lines
        if line.startswith(("ray_raysight_requests_total{", dropped))
    ]
    assert any(line.startswith(dropped) and f'model="{model}"' in line for line in lines), counted
    # DEADLINE_EXCEEDED when the replica answered it; CANCELLED when HAProxy had it on its
    # fallback, Serve's proxy, which passes the client's cancel on but not its deadline.
    assert any(
        line.startswith("ray_raysight_requests_total{")
        and re.search(r'code="(DEADLINE_EXCEEDED|CANCELLED)"', line)
        for line in lines
    ), counted
