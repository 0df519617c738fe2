"""Model-quality metrics on Ray's Prometheus endpoint: every classified row is counted under
its predicted class and its confidence observed, and the served checkpoint's class prior is
exported, through both the Open Inference Protocol and the image API."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.checkpoint import load_checkpoint, save_checkpoint
from raysight.data import class_frequencies, load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.metrics import CONFIDENCE_BUCKETS
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port, scrape_metrics
from tests.integration.serving import digits_checkpoint, png, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"
PREDICTIONS = "ray_raysight_predictions_total"
CONFIDENCE_COUNT = "ray_raysight_prediction_confidence_count"
CONFIDENCE_BUCKET = "ray_raysight_prediction_confidence_bucket"
PRIOR = "ray_raysight_model_class_prior"

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclasses.dataclass(frozen=True)
class Served:
    target: str
    engine: Engine  # the served checkpoint, in process: what the server should predict
    version: str


@pytest.fixture(scope="module")
def served(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:

    path = _checkpoint_with_frequencies(tmp_path_factory.mktemp("quality") / "digits")
    settings = ServeSettings(checkpoint=str(path), max_batch_size=16)
    port = free_port()
    engine = Engine.from_directory(path)
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=free_port()))
        yield Served(f"127.0.0.1:{port}", engine, engine.manifest.weights_sha256[:12])
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _checkpoint_with_frequencies(directory: Path) -> Path:
    """The serving tests' digits checkpoint (its own seed, so its own version), with the
    training split's class frequencies recorded as training records them."""
    loaded = load_checkpoint(digits_checkpoint(directory, seed=7))
    labels = load_arrays("digits", None, "train").labels
    manifest = dataclasses.replace(loaded.manifest, class_frequencies=class_frequencies(labels, 10))
    return save_checkpoint(directory, state_dict=loaded.state_dict, manifest=manifest)


def _samples(text: str, name: str, version: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` for `version` of the model."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("model") == MODEL and labels.get("version") == version:
            found.append((labels, float(match["value"])))
    return found


def _by_class(text: str, version: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for labels, value in _samples(text, PREDICTIONS, version):
        totals[labels["class"]] += int(value)
    return totals


def _total(text: str, name: str, version: str) -> float:
    return sum(value for _, value in _samples(text, name, version))


def _buckets(text: str, version: str) -> Counter[float]:
    """Cumulative confidence counts by upper bound ("le")."""
    totals: Counter[float] = Counter()
    for labels, value in _samples(text, CONFIDENCE_BUCKET, version):
        totals[float(labels["le"])] += int(value)
    return totals


def test_every_row_is_counted_by_class_with_its_confidence(
    served: Served, ray_cluster: RayCluster
) -> None:
    port, version = ray_cluster.metrics_port, served.version
    # The prior is set when the model loads, so once it shows the exporter has this replica.
    before = scrape_metrics(port, lambda t: bool(_samples(t, PRIOR, version)))
    images = load_arrays("digits", None, "test").images[:11]  # (11, 1, 8, 8) uint8
    probabilities = np.exp(served.engine.classify_pixels(images).astype(np.float64))
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # (11, 10)
    expected = Counter(served.engine.class_names[k] for k in probabilities.argmax(axis=1))

    # 8 rows through ModelInfer, asking for the logits only: the forward pass counts them
    # whatever outputs a request wants.
    client = triton.InferenceServerClient(url=served.target)
    tensor = triton.InferInput("images", [8, 1, 8, 8], "UINT8")
    tensor.set_data_from_numpy(images[:8])
    client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits")])
    # 3 images through the image API.
    stub = image_grpc.ImageServiceStub(grpc.insecure_channel(served.target))
    for image in images[8:]:
        assert stub.Classify(image_pb.ClassifyRequest(image=png(image[0]))).predictions

    rows = len(images)
    counted = _by_class(before, version) + expected

    def settled(text: str) -> bool:
        return (
            _by_class(text, version) == counted
            and _total(text, CONFIDENCE_COUNT, version)
            == _total(before, CONFIDENCE_COUNT, version) + rows
        )

    after = scrape_metrics(port, settled)
    assert _by_class(after, version) - _by_class(before, version) == expected
    assert (
        sum(_by_class(after, version).values()) - sum(_by_class(before, version).values()) == rows
    )
    observed = _total(after, CONFIDENCE_COUNT, version) - _total(before, CONFIDENCE_COUNT, version)
    assert observed == rows
    # Each row landed in the bucket of its own confidence. (Not _sum: Ray 2.60 exports a
    # histogram's sum rebuilt from bucket midpoints, so it is only an estimate.)
    confidences = probabilities.max(axis=1)  # (11,)
    grown = _buckets(after, version)
    grown.subtract(_buckets(before, version))
    assert dict(grown) == {
        le: int((confidences <= le).sum()) for le in (*CONFIDENCE_BUCKETS, math.inf)
    }


def test_the_class_prior_is_the_checkpoints_training_frequencies(
    served: Served, ray_cluster: RayCluster
) -> None:
    text = scrape_metrics(
        ray_cluster.metrics_port, lambda t: len(_samples(t, PRIOR, served.version)) >= 10
    )
    prior = {labels["class"]: value for labels, value in _samples(text, PRIOR, served.version)}
    frequencies = served.engine.manifest.class_frequencies
    assert frequencies is not None
    assert prior == pytest.approx(dict(zip(served.engine.class_names, frequencies, strict=True)))
    assert sum(prior.values()) == pytest.approx(1.0, abs=1e-6)
