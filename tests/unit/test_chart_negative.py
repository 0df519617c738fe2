"""Each chart check fails on a defect planted in a copy of the chart: the checks in
test_chart.py pass because the chart is right, not because they cannot fail."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests import k8s_checks
from tests.chart import CHART, kinds, lint_problems, render, values_of
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


Edit = tuple[str, str, str]
"""(template, old, new): a defect for `planted`."""
# Values that render each custom kind: training on, and each kind of monitor.
TRAIN = values_of(CHART / "values-cpu.yaml")
POD_MONITOR = {"monitoring": {"enabled": True}}
SERVICE_MONITOR = {"monitoring": {"enabled": True, "kind": "ServiceMonitor"}}
RULES = {"monitoring": {"rules": {"enabled": True}}}


@needs_crds
@pytest.mark.parametrize(
    ("values", "edit", "kind", "message"),
    [
        # A misspelt RayJob field.
        (
            TRAIN,
            ("rayjob.yaml", "  shutdownAfterJobFinishes: true", "  shutdownAfterJobFinish: true"),
            "RayJob",
            "spec: Additional properties are not allowed ('shutdownAfterJobFinish' was",
        ),
        # A string where the RayJob wants an integer.
        (
            TRAIN,
            (
                "rayjob.yaml",
                "  backoffLimit: {{ int $train.backoffLimit }}",
                '  backoffLimit: "{{ int $train.backoffLimit }}"',
            ),
            "RayJob",
            "spec.backoffLimit: '0' is not of type 'integer'",
        ),
        # A misspelt field of a PodMonitor's endpoint.
        (
            POD_MONITOR,
            ("podmonitor.yaml", "      scrapeTimeout:", "      scrapeTimout:"),
            "PodMonitor",
            "spec.podMetricsEndpoints.0: Additional properties are not allowed ('scrapeTimout'",
        ),
        # A ServiceMonitor endpoint's path under a name it does not have.
        (
            SERVICE_MONITOR,
            ("servicemonitor.yaml", "      path: /metrics", "      metricsPath: /metrics"),
            "ServiceMonitor",
            "spec.endpoints.0: Additional properties are not allowed ('metricsPath' was",
        ),
        # A rule group's interval as a number, not a duration.
        (
            RULES,
            (
                "prometheusrule.yaml",
                "    - name: raysight.serving.rules\n",
                "    - name: raysight.serving.rules\n      interval: 30\n",
            ),
            "PrometheusRule",
            "spec.groups.0.interval: 30 is not of type 'string'",
        ),
        # A misspelt rule field.
        (
            RULES,
            (
                "prometheusrule.yaml",
                "        - record: model_version_method_code:raysight_requests:rate5m",
                "        - recorded: model_version_method_code:raysight_requests:rate5m",
            ),
            "PrometheusRule",
            "spec.groups.0.rules.0: Additional properties are not allowed ('recorded' was",
        ),
    ],
)
def test_a_wrong_field_fails_every_custom_kinds_crd(
    tmp_path: Path, values: dict[str, Any], edit: Edit, kind: str, message: str
) -> None:
    """The RayService has its own cases above; these cover the other CRDs the chart uses."""
    chart = planted(tmp_path, *edit)
    (obj,) = kinds(render(values, chart=chart), kind)
    with pytest.raises(CheckError, match=re.escape(f"{kind}/raysight") + ".*" + re.escape(message)):
        k8s_checks.validate_object(obj)


@pytest.mark.parametrize(
    ("edit", "kind", "path", "field"),
    [
        # A Service port as a string: Kubernetes wants an integer.
        (
            (
                "service-grpc.yaml",
                "      port: {{ int $svc.port }}",
                '      port: "{{ int $svc.port }}"',
            ),
            "Service",
            "spec.ports.0.port",
            "'9000' is not of type 'integer'",
        ),
        # A misspelt PodDisruptionBudget field.
        (
            ("poddisruptionbudget.yaml", "  maxUnavailable: {{", "  maxUnavailabe: {{"),
            "PodDisruptionBudget",
            "spec",
            "'maxUnavailabe' was unexpected",
        ),
    ],
)
def test_a_wrong_builtin_field_fails_kubernetes_validate(
    tmp_path: Path, edit: Edit, kind: str, path: str, field: str
) -> None:
    """The refusal is kubernetes-validate's own (its error is the cause) at every Kubernetes
    version checked, not one of the checks the module adds before it."""
    chart = planted(tmp_path, *edit)
    (obj,) = kinds(render(chart=chart), kind)
    for version in k8s_checks.KUBE_VERSIONS:
        with pytest.raises(CheckError) as caught:
            k8s_checks.validate_object(obj, version)
        cause = caught.value.__cause__
        assert isinstance(cause, kubernetes_validate.ValidationError), version
        assert ".".join(map(str, cause.absolute_path)) == path, version
        assert field in cause.message, version


def _no_limits(container: dict[str, Any]) -> None:
    del container["resources"]["limits"]


def _escalates(container: dict[str, Any]) -> None:
    container["securityContext"]["allowPrivilegeEscalation"] = True


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (_no_limits, "no limits for cpu, memory"),
        (_escalates, "allowPrivilegeEscalation must be false"),
    ],
)
def test_an_unbounded_or_escalating_container_fails_the_hardening_check(
    defect: Callable[[dict[str, Any]], None], message: str
) -> None:
    """The defect is planted in one container, the serving workers' Ray container, and the
    check names that container."""
    objects = render(TRAIN)
    k8s_checks.check_pods_hardened(objects)  # clean before the defect
    (rayservice,) = kinds(objects, "RayService")
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    defect(container)
    where = f"RayService/raysight group {group['groupName']} {container['name']}"
    with pytest.raises(CheckError, match=re.escape(f"{where}: {message}")):
        k8s_checks.check_pods_hardened(objects)


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
