"""The chart's rules and the Grafana dashboard against a real Prometheus scraping the session's
Ray cluster: a short training run and served traffic (with some bad requests) must give every
recording rule and every dashboard query data, and Ray's scrape must pass promtool's lint
but for the labels Ray adds."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.config import TrainConfig
from raysight.data import load_arrays
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from raysight.train.trainer import train
from tests.conftest import RayCluster, free_port, require_tool
from tests.integration.serving import png, stop_serve
from tests.promql import (
    DASHBOARD,
    Prometheus,
    Query,
    dashboard_queries,
    prometheus,
    recording_rules,
    rules_spec,
    substituted,
    write_rules,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"
RUN = "prometheus-check"
# The labels Ray adds to every application metric (camelCase, which promtool's lint flags).
RAY_LABELS = ("Component", "NodeAddress", "SessionName", "Version", "WorkerId")
TRAFFIC_S = 30.0  # three of Ray's 10 s exports: counters rise between them, so rates are > 0


class RawScrapes:
    """Ray's metrics text, fetched every 2 s in a thread while the cluster trains and serves.

    Gauges leave the scrape soon after their last update (a finished run's at once), so no
    single scrape holds every metric: this keeps the latest scrape of each distinct set of
    raysight metric names.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.texts: dict[frozenset[str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RawScrapes:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            try:
                url = f"http://127.0.0.1:{self.port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as reply:
                    text = reply.read().decode()
            except OSError:
                continue  # the next try will do; a missing metric fails the test
            self.texts[metric_names(text)] = text

    def names(self) -> set[str]:
        return set().union(*self.texts)


def metric_names(text: str) -> frozenset[str]:
    """The raysight sample names in a scrape (`..._bucket` and `..._sum` apart)."""
    return frozenset(
        line.split("{")[0] for line in text.splitlines() if line.startswith("ray_raysight_")
    )


@dataclass(frozen=True)
class Scraped:
    """A Prometheus that watched the cluster train and serve since `start` (Unix seconds)."""

    server: Prometheus
    start: float
    queries: list[Query]  # every recording rule's expression and every dashboard query
    raw: RawScrapes  # Ray's own text over the same time

    def without_data(self, queries: list[Query] | None = None) -> list[Query]:
        return self.server.without_data(
            self.queries if queries is None else queries, self.start, time.time()
        )


def _rule_queries() -> list[Query]:
    return [Query(f"rule {name}", expr) for name, expr in recording_rules(rules_spec())]


def _panel_queries(dashboard: dict) -> list[Query]:
    variables = {"model": MODEL, "run": RUN, "__rate_interval": "1m", "datasource": "prometheus"}
    return [substituted(q, variables) for q in dashboard_queries(dashboard)]


def _train(root: Path) -> Path:
    cfg = TrainConfig(
        dataset="digits",
        model="convnet",
        model_args={"padding": "same"},
        epochs=3,
        batch_size=64,
        workers=1,
        max_failures=0,
        output=str(root / "model"),
        storage_path=str(root / "storage"),
        run_name=RUN,
    )
    return Path(train(cfg).checkpoint)


def _traffic(target: str, seconds: float) -> list[str]:
    """Good and bad calls on both APIs for `seconds`; the status codes they got."""
    images = load_arrays("digits", None, "test").images[:64]  # (64, 1, 8, 8) uint8
    client = triton.InferenceServerClient(url=target)
    stub = image_grpc.ImageServiceStub(grpc.insecure_channel(target))
    codes: list[str] = []
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline:
        batch = images[(4 * step) % 60 :][:4]
        calls = [("images", batch), ("png", png(images[step % 64][0]))]
        if step % 4 == 0:  # one call in four is bad: a wrong shape, bytes that are no image
            calls += [("images", np.zeros((1, 1, 9, 9), np.uint8)), ("png", b"not an image")]
        for kind, payload in calls:
            try:
                if kind == "images":
                    tensor = triton.InferInput("images", list(payload.shape), "UINT8")
                    tensor.set_data_from_numpy(payload)
                    client.infer(MODEL, [tensor], client_timeout=30)
                else:
                    stub.Classify(image_pb.ClassifyRequest(image=payload), timeout=30)
                codes.append("OK")
            except InferenceServerException as exc:
                codes.append(str(exc.status()).removeprefix("StatusCode."))
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        step += 1
        time.sleep(0.05)
    return codes


@pytest.fixture(scope="module")
def scraped(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:

    require_tool("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(write_rules(rules_spec(), root))],
        "scrape_configs": [
            {
                "job_name": "ray",
                "static_configs": [{"targets": [f"127.0.0.1:{ray_cluster.metrics_port}"]}],
            }
        ],
    }
    queries = _rule_queries() + _panel_queries(json.loads(DASHBOARD.read_text()))
    with (
        prometheus(config, root, free_port()) as server,
        RawScrapes(ray_cluster.metrics_port) as raw,
    ):
        start = time.time()
        checkpoint = _train(root)
        port = free_port()
        settings = ServeSettings(checkpoint=str(checkpoint), model_name=MODEL, max_batch_size=16)
        try:
            runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=free_port()))
            codes = _traffic(f"127.0.0.1:{port}", TRAFFIC_S)
            assert {"OK", "INVALID_ARGUMENT"} <= set(codes), set(codes)
            scraped = Scraped(server, start, queries, raw)
            # Ray exports every 10 s, then a scrape and a rule evaluation follow (1 s each).
            deadline = time.monotonic() + 60
            while scraped.without_data() and time.monotonic() < deadline:
                time.sleep(2)
            raw.stop()
            yield scraped
        finally:
            stop_serve(ray_cluster.dashboard_url)


def test_every_recording_rule_returns_data(scraped: Scraped) -> None:
    rules = [q for q in scraped.queries if q.where.startswith("rule ")]
    assert len(rules) >= 25
    assert [q.where for q in scraped.without_data(rules)] == []


def test_every_dashboard_query_returns_data(scraped: Scraped) -> None:
    """Over the whole window; an instant query (the tables) at its end, with the model still
    served, as Grafana would show it then."""
    panels = [q for q in scraped.queries if not q.where.startswith("rule ")]
    assert len(panels) >= 20
    assert [f"{q.where}: {q.expr}" for q in scraped.without_data(panels)] == []


def test_a_query_of_a_metric_that_does_not_exist_is_reported(scraped: Scraped) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Requests per second"]
    target = panel["targets"][0]
    target["expr"] = target["expr"].replace("raysight_requests", "raysight_request")
    planted = _panel_queries(dashboard)
    reported = set(scraped.without_data(planted)) - set(scraped.without_data())
    assert [q.expr for q in reported] == [
        'model_version:raysight_request:rate5m{model=~"convnet-digits"}'
    ]
    missing = Query("planted", "sum(rate(ray_raysight_no_such_thing_total[5m]))")
    assert scraped.without_data([missing]) == [missing]


def _lint(text: str, directory: Path) -> list[str]:
    """promtool's complaints about raysight's metrics in a Prometheus text scrape."""
    path = directory / "scrape.txt"
    path.write_text(text)
    with path.open() as scrape:
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            stdin=scrape,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    return [line for line in (result.stdout + result.stderr).splitlines() if "raysight_" in line]


def _without_ray_labels(text: str) -> str:
    """The raysight lines of a scrape with Ray's labels removed (duplicates dropped)."""
    pair = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    lines: dict[str, None] = {}
    for line in text.splitlines():
        if "raysight_" not in line:
            continue
        if line.startswith("#"):
            lines[line] = None
            continue
        found = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        assert found, line
        name, labels, value = found.groups()
        kept = ",".join(
            f'{key}="{val}"' for key, val in pair.findall(labels) if key not in RAY_LABELS
        )
        lines[f"{name}{{{kept}}} {value}"] = None
    return "\n".join(lines) + "\n"


def test_promtool_lint_flags_only_the_labels_ray_adds(scraped: Scraped, tmp_path: Path) -> None:
    require_tool("promtool")
    assert {
        "ray_raysight_requests_total",
        "ray_raysight_request_duration_seconds_bucket",
        "ray_raysight_batch_size_bucket",
        "ray_raysight_model_info",
        "ray_raysight_prediction_confidence_bucket",
        "ray_raysight_predictions_total",
        "ray_raysight_model_class_prior",
        "ray_raysight_rejected_inputs_total",
        "ray_raysight_train_samples_per_second",
        "ray_raysight_train_loss",
        "ray_raysight_train_epochs_total",
    } <= scraped.raw.names()
    camel = "label names should be written in 'snake_case' not 'camelCase'"
    for text in scraped.raw.texts.values():
        if not metric_names(text):
            continue  # before the first raysight metric
        complaints = _lint(text, tmp_path)
        assert complaints and all(camel in line for line in complaints), complaints
        # Without Ray's five labels the same metrics pass: they were the only camelCase ones.
        assert _lint(_without_ray_labels(text), tmp_path) == []
