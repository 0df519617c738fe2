"""Each chart check fails on a defect planted in a copy of the chart: the checks in
test_chart.py pass because the chart is right, not because they cannot fail."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests import k8s_checks
from tests.chart import CHART, kinds, lint_problems, render
from tests.k8s_checks import CheckError

needs_crds = pytest.mark.skipif(
    not k8s_checks.crds_available(), reason=f"CRD schemas not found under {k8s_checks.SCHEMAS}"
)


def planted(tmp_path: Path, template: str, old: str, new: str) -> Path:
    """A copy of the chart with `old` replaced by `new` once in templates/`template`."""
    chart = k8s_checks.copy_chart(CHART, tmp_path)
    path = chart / "templates" / template
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {template}"
    path.write_text(text.replace(old, new))
    return chart


def test_a_template_syntax_error_fails_render_and_lint(tmp_path: Path) -> None:
    import helm_python as helm

    chart = planted(
        tmp_path, "service-grpc.yaml", "  type: {{ $svc.type }}", "  type: {{ $svc.type "
    )
    with pytest.raises(helm.HelmError):
        render(chart=chart)
    assert lint_problems(chart=chart)


@needs_crds
@pytest.mark.parametrize(
    ("template", "old", "new", "message"),
    [
        # An int where KubeRay wants a string.
        (
            "_helpers.tpl",
            "(toString (int .root.Values.ray.metricsPort))",
            "(int .root.Values.ray.metricsPort)",
            "metrics-export-port: 8080 is not of type 'string'",
        ),
        # An unknown field under spec.
        (
            "rayservice.yaml",
            "  excludeHeadPodFromServeSvc: true",
            "  excludeHeadPodFromServeSvc: true\n  serveConfig: {}",
            "spec: Additional properties are not allowed ('serveConfig' was unexpected)",
        ),
        # A misspelt field of a worker group.
        (
            "rayservice.yaml",
            "        replicas: {{ int $serve.worker.replicas }}",
            "        replica: {{ int $serve.worker.replicas }}",
            "'replica' was unexpected",
        ),
        # A misspelt field deep in a pod template.
        (
            "_helpers.tpl",
            "      imagePullPolicy: {{ $root.Values.image.pullPolicy }}",
            "      pullPolicy: {{ $root.Values.image.pullPolicy }}",
            "'pullPolicy' was unexpected",
        ),
    ],
)
def test_a_wrong_crd_field_fails_crd_validation(
    tmp_path: Path, template: str, old: str, new: str, message: str
) -> None:
    chart = planted(tmp_path, template, old, new)
    (rayservice,) = kinds(render(chart=chart), "RayService")
    with pytest.raises(CheckError, match=re.escape(message)):
        k8s_checks.validate_object(rayservice)


@pytest.mark.parametrize(
    ("template", "old", "new", "message"),
    [
        # The Service sends gRPC to the metrics port.
        ("service-grpc.yaml", "targetPort: grpc", "targetPort: metrics", "sends gRPC to 8080"),
        # The container opens another port than Serve's.
        (
            "rayservice.yaml",
            '(dict "name" "grpc" "containerPort" (int $serve.grpcPort))',
            '(dict "name" "grpc" "containerPort" 9001)',
            "the port named 'grpc' is 9001",
        ),
        # The probes call a port nobody listens on.
        (
            "rayservice.yaml",
            '{{- $grpcProbe := dict "grpc" (dict "port" (int $serve.grpcPort)) }}',
            '{{- $grpcProbe := dict "grpc" (dict "port" 9001) }}',
            "calls port 9001",
        ),
        # The monitor scrapes a port name the pods lack.
        ("podmonitor.yaml", "- port: metrics", "- port: metric", "scrapes port 'metric'"),
    ],
)
def test_a_port_mismatch_fails_the_port_check(
    tmp_path: Path, template: str, old: str, new: str, message: str
) -> None:
    chart = planted(tmp_path, template, old, new)
    objects = render({"monitoring": {"enabled": True}}, chart=chart)
    with pytest.raises(CheckError, match=message):
        k8s_checks.check_ports(objects)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve": {"grpcPort": "9000"}}, "/serve/grpcPort"),
        ({"serve": {"settings": {"max_batch_size": 1.5}}}, "/serve/settings/max_batch_size"),
        ({"serve": {"settings": {"max_batch": 8}}}, "'max_batch' not allowed"),
        ({"serve": {"ingress": "nginx"}}, "/serve/ingress"),
        ({"serve": {"settings": {"require_signature": True}}}, "/serve/settings/signature_trust"),
        ({"serve": {"head": {"rayStartParams": {"num-cpus": 0}}}}, "num-cpus"),
        ({"serve": {"worker": {"resources": {"limits": {"cpu": "lots"}}}}}, "limits/cpu"),
        ({"train": {"config": {"gpu": True}}}, "'gpu' not allowed"),
        ({"train": {"config": {"epochs": "five"}}}, "/train/config/epochs"),
        ({"monitoring": {"podMonitor": {"interval": "often"}}}, "/monitoring/podMonitor/interval"),
        ({"alerts": {"errorRatio": 5}}, "/alerts/errorRatio"),
        ({"replicas": 3}, "'replicas' not allowed"),
    ],
)
def test_the_schema_refuses_wrong_types_and_unknown_keys(
    values: dict[str, Any], message: str
) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


@needs_crds
def test_a_kind_no_validator_covers_fails(tmp_path: Path) -> None:
    chart = k8s_checks.copy_chart(CHART, tmp_path)
    (chart / "templates" / "widget.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\nspec: {}\n"
    )
    objects = render(chart=chart)
    with pytest.raises(CheckError, match="Widget/gadget: no validator covers it"):
        k8s_checks.validate_all(objects)


def test_a_serve_config_naming_missing_code_fails(tmp_path: Path) -> None:
    chart = planted(
        tmp_path,
        "_helpers.tpl",
        '"import_path" "raysight.serve.app:app_builder"',
        '"import_path" "raysight.serve.app:build_app"',
    )
    (rayservice,) = kinds(render(chart=chart), "RayService")
    with pytest.raises(CheckError, match="build_app does not import"):
        k8s_checks.check_serve_config(rayservice)


def test_an_invalid_name_fails() -> None:
    (service,) = [s for s in kinds(render({}), "Service") if s["metadata"]["name"].endswith("grpc")]
    service["metadata"]["name"] = "9-grpc"
    with pytest.raises(CheckError, match="DNS label"):
        k8s_checks.validate_object(service)
