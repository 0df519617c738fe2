"""The Helm chart, rendered offline: every object valid, the Serve config the one raysight
builds, ports that agree, values that mirror the typed configs. No cluster, no helm binary."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import tomllib
import types
import typing
from typing import Any, Literal

import pytest
import yaml

from raysight.config import TrainConfig
from raysight.serve.grpc_services import GRPC_SERVICER_FUNCTIONS
from raysight.serve.settings import ServeSettings, replica_env
from tests import k8s_checks
from tests.chart import CHART, chart_values, kinds, lint_problems, render, render_files, values_of
from tests.conftest import REPO

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

# Everything optional switched on, over the GPU example.
EVERYTHING = {
    "monitoring": {"enabled": True, "rules": {"enabled": True}},
    "ray": {"auth": {"enabled": True}},
    "tls": {"secretName": "raysight-tls", "requireClientCertificate": True},
    "serve": {"settings": {"checkpoint_sha256": "ab" * 32}},
    "train": {"activeDeadlineSeconds": 86400},
}
# The other branches: the classic proxy, a ServiceMonitor, a headless LoadBalancer, an
# existing auth Secret, and a job submitted over HTTP with checkpoints in object storage.
ALTERNATIVES = {
    "monitoring": {"enabled": True, "kind": "ServiceMonitor"},
    "ray": {"auth": {"enabled": True, "secretName": "ray-token"}},
    "serve": {
        "ingress": "proxy",
        "service": {"type": "LoadBalancer", "headless": True},
        "probes": {"liveness": {"enabled": False}},
    },
    "train": {
        "enabled": True,
        "submissionMode": "HTTPMode",
        "config": {"output": "gs://b/latest", "storage_path": "gs://b/ray"},
    },
}
VARIANTS = {
    "defaults": lambda: {},
    "gpu": lambda: values_of(CHART / "values-gpu.yaml"),
    "cpu": lambda: values_of(CHART / "values-cpu.yaml"),
    "everything": lambda: values_of(CHART / "values-gpu.yaml", overrides=EVERYTHING),
    "alternatives": lambda: values_of(overrides=ALTERNATIVES),
}
needs_crds = pytest.mark.skipif(
    not k8s_checks.crds_available(), reason=f"CRD schemas not found under {k8s_checks.SCHEMAS}"
)


@functools.cache
def rendered(variant: str) -> list[dict[str, Any]]:
    return render(VARIANTS[variant]())


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = kinds(objects, kind)
    return obj


def ray_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The Ray container of each node group of a RayService or RayJob."""
    return [
        group["template"]["spec"]["containers"][0] for _, group, _ in k8s_checks.ray_groups(obj)
    ]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def serve_group(rayservice: dict[str, Any]) -> dict[str, Any]:
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return group


# ---- the chart as a whole ---------------------------------------------------------------------


def test_chart_metadata_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"].startswith(">=1.29")
    container = ray_containers(one(rendered("defaults"), "RayService"))[0]
    assert container["image"] == f"raysight:{project['version']}"  # the tag defaults to it


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict_is_clean(variant: str) -> None:
    assert lint_problems(VARIANTS[variant]()) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_builtin_objects_are_valid(variant: str) -> None:
    """Every built-in kind against the Kubernetes schemas (needs nothing from ../shared)."""
    for obj in rendered(variant):
        if (obj["apiVersion"], obj["kind"]) not in k8s_checks.CRDS:
            for version in k8s_checks.KUBE_VERSIONS:
                k8s_checks.validate_object(obj, version)


@needs_crds
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid(variant: str) -> None:
    """Every object, custom kinds against their CRDs; a kind nothing validates fails."""
    k8s_checks.validate_all(rendered(variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_agree(variant: str) -> None:
    k8s_checks.check_ports(rendered(variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_bounded_and_unprivileged(variant: str) -> None:
    objects = rendered(variant)
    k8s_checks.check_pods_hardened(objects)
    for where, template in k8s_checks.pod_templates(objects):
        spec = template["spec"]
        assert spec["serviceAccountName"] == "raysight", where
        if "submitter" in where:
            continue
        assert spec["securityContext"]["runAsUser"] == 1000, where
        assert spec["securityContext"]["fsGroup"] == 100, where
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] == "tmp", where  # Ray's session dir lives here
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where


def test_notes_say_how_to_call_the_service() -> None:
    notes = render_files(VARIANTS["everything"]())["raysight/templates/NOTES.txt"]
    assert "raysight-grpc.ml.svc.cluster.local:9000" in notes
    assert "raysight predict" in notes
    assert "grpc.health.v1.Health/Check" in notes
    assert "tritonclient" in notes
    assert "port 8080" in notes
    assert "PodMonitor raysight" in notes
    assert "rayjob raysight-train" in notes
    # "everything" serves mutual TLS: the commands carry the CA and a client certificate.
    assert "gRPC (mutual TLS)" in notes
    assert "--tls-ca ca.crt --tls-cert client.crt --tls-key client.key" in notes
    assert "-plaintext" not in notes
    plain = render_files(VARIANTS["defaults"]())["raysight/templates/NOTES.txt"]
    assert "gRPC (plaintext)" in plain and "grpcurl -plaintext" in plain


# ---- values and schema ------------------------------------------------------------------------


def _undocumented_keys(text: str) -> list[str]:
    """Keys of a values file with no comment on their line or on the line above.

    Keys inside a list item belong to that list's value, which is documented as a whole.
    """
    missing = []
    previous = ""
    item_indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("- "):
            item_indent = indent
        elif item_indent is not None and indent <= item_indent:
            item_indent = None
        key = re.match(r"^\s*([\w./-]+):(\s|$)", line)
        documented = previous.startswith("#") or " # " in line
        if key and item_indent is None and not documented:
            missing.append(key.group(1))
        previous = stripped
    return missing


@pytest.mark.parametrize("name", ["values.yaml", "values-gpu.yaml", "values-cpu.yaml"])
def test_every_value_has_a_comment(name: str) -> None:
    assert _undocumented_keys((CHART / name).read_text()) == []


def _open_objects(schema: Any, pointer: str = "") -> list[str]:
    """JSON pointers of object schemas that accept keys they do not name."""
    found = []
    if isinstance(schema, dict):
        named = "properties" in schema
        typed_map = not named and isinstance(schema.get("additionalProperties"), dict)
        closed = schema.get("additionalProperties") is False
        if schema.get("type") == "object" and not closed and not typed_map:
            found.append(pointer)
        for key, value in schema.items():
            found += _open_objects(value, f"{pointer}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _open_objects(value, f"{pointer}/{i}")
    return found


def test_schema_refuses_unknown_keys_throughout() -> None:
    """Every object names its keys (a map's keys are typed instead); the few free-form ones
    hold Kubernetes or torch structures the chart passes through."""
    assert sorted(_open_objects(SCHEMA)) == [
        "/$defs/affinity/properties/nodeAffinity",
        "/$defs/affinity/properties/podAffinity",
        "/$defs/affinity/properties/podAntiAffinity",
        "/$defs/envVar/properties/valueFrom",
        "/$defs/trainConfig/properties/model_args",
        "/properties/global",
    ]


def test_defaults_and_examples_pass_the_schema() -> None:
    import jsonschema

    for values in (DEFAULTS, chart_values(VARIANTS["gpu"]()), chart_values(VARIANTS["cpu"]())):
        jsonschema.validators.validator_for(SCHEMA)(SCHEMA).validate(values)


def _json_types(hint: Any) -> set[str]:
    """The JSON types a value of a config field's type hint may be written as."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_json_types, args))
    if origin is Literal:
        return set().union(*(_json_types(type(a)) for a in args))
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in simple:
        return {simple[hint]}
    return {type(None): {"null"}, tuple: {"array"}, dict: {"object"}}.get(origin or hint, set())


def _schema_types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*map(_schema_types, schema["anyOf"]))
    if "enum" in schema:
        names = {str: "string", int: "integer", float: "number", bool: "boolean"}
        return {names[type(v)] for v in schema["enum"]}
    declared = schema["type"]
    return set(declared) if isinstance(declared, list) else {declared}


def _field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_serve_settings_values_mirror_the_dataclass() -> None:
    """serve.settings is ServeSettings: the same keys, its defaults, its types in the schema;
    a field added to the class fails here until the chart has it."""
    fields = [f.name for f in dataclasses.fields(ServeSettings)]
    hints = typing.get_type_hints(ServeSettings)
    schema = SCHEMA["$defs"]["serveSettings"]
    assert list(DEFAULTS["serve"]["settings"]) == fields
    assert list(schema["properties"]) == fields
    assert schema["required"] == fields
    for name, default in _field_defaults(ServeSettings).items():
        assert DEFAULTS["serve"]["settings"][name] == default, name
    for name in fields:
        assert _schema_types(schema["properties"][name]) == _json_types(hints[name]), name
    assert schema["properties"]["device"]["enum"] == list(typing.get_args(hints["device"]))


def test_train_config_schema_mirrors_the_dataclass() -> None:
    """train.config takes every TrainConfig field but gpu (which follows the worker GPUs),
    typed as the class types it; the chart's defaults are the class's where it keeps them."""
    hints = typing.get_type_hints(TrainConfig)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "gpu"]
    schema = SCHEMA["$defs"]["trainConfig"]
    assert sorted(schema["properties"]) == sorted(fields)
    # Required where the chart must not keep the class's default (a local relative path).
    narrowed = {"storage_path": {"string"}}
    for name in fields:
        expected = narrowed.get(name, _json_types(hints[name]))
        assert _schema_types(schema["properties"][name]) == expected, name
    for name in ("optimizer", "schedule", "augment"):
        assert schema["properties"][name]["enum"] == list(typing.get_args(hints[name]))
    defaults = _field_defaults(TrainConfig)
    for name, value in DEFAULTS["train"]["config"].items():
        if name not in ("output", "storage_path"):
            assert value == defaults[name], name


def test_serve_autoscaling_keys_are_serves() -> None:
    from ray.serve.config import AutoscalingConfig

    allowed = set(SCHEMA["$defs"]["serveAutoscaling"]["properties"])
    assert allowed <= set(AutoscalingConfig.model_fields)


# ---- the RayService ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_is_the_one_raysight_builds(variant: str) -> None:
    from raysight.serve import runner

    serve = chart_values(VARIANTS[variant]())["serve"]
    rayservice = one(rendered(variant), "RayService")
    config = k8s_checks.check_serve_config(rayservice)  # Serve's schema; every path imports
    expected = runner.serve_config(
        ServeSettings.from_dict(serve["settings"]),
        grpc_port=serve["grpcPort"],
        http_port=serve["httpPort"],
        replicas=serve["replicas"],
        num_cpus=serve["numCpus"],
        num_gpus=serve["numGpus"],
        max_ongoing_requests=serve["maxOngoingRequests"],
        max_queued_requests=serve["maxQueuedRequests"],
        max_message_bytes=serve["maxMessageBytes"],
        autoscaling=serve["autoscaling"] or None,
    )
    assert config == expected
    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    (deployment,) = config["applications"][0]["deployments"]
    settings = ServeSettings.from_dict(deployment["user_config"])
    assert settings.to_dict() == deployment["user_config"]


def test_ingress_mode_sets_haproxy_on_every_ray_container() -> None:
    for variant, expected in (("defaults", "1"), ("alternatives", None)):
        for container in ray_containers(one(rendered(variant), "RayService")):
            assert env_of(container).get("RAY_SERVE_ENABLE_HA_PROXY") == expected, variant
    rayjob = one(rendered("cpu"), "RayJob")  # training runs no Serve
    assert all("RAY_SERVE_ENABLE_HA_PROXY" not in env_of(c) for c in ray_containers(rayjob))


def test_head_runs_no_replicas_and_exports_metrics() -> None:
    spec = one(rendered("defaults"), "RayService")["spec"]
    params = spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert params == {
        "num-cpus": "0",
        "dashboard-host": "0.0.0.0",
        "dashboard-port": "8265",
        "metrics-export-port": "8080",
    }
    assert serve_group(one(rendered("defaults"), "RayService"))["rayStartParams"] == {
        "metrics-export-port": "8080"
    }
    assert spec["excludeHeadPodFromServeSvc"] is True


def test_probes_are_grpc_on_the_workers_and_kuberays_on_the_head() -> None:
    rayservice = one(rendered("defaults"), "RayService")
    head, worker = ray_containers(rayservice)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe not in head  # KubeRay injects its own; it waits for a ready head
        assert worker[probe]["grpc"] == {"port": 9000}
    worker = ray_containers(one(rendered("alternatives"), "RayService"))[1]
    assert "livenessProbe" not in worker  # left to KubeRay
    assert worker["readinessProbe"]["grpc"] == {"port": 9000}


def test_serving_workers_drain_before_they_stop() -> None:
    group = serve_group(one(rendered("defaults"), "RayService"))
    spec = group["template"]["spec"]
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert "ray drain-node" in command[-1]
    assert command[-1].endswith("sleep 30")
    assert spec["terminationGracePeriodSeconds"] == 90


def test_gpu_example_puts_one_gpu_under_each_replica_and_worker() -> None:
    objects = rendered("gpu")
    rayservice, rayjob = one(objects, "RayService"), one(objects, "RayJob")
    config = k8s_checks.serve_config(rayservice)
    assert config["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] == 1
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    for obj in (rayservice, rayjob):
        for where, group, labels in k8s_checks.ray_groups(obj):
            spec = group["template"]["spec"]
            limits = spec["containers"][0]["resources"]["limits"]
            if labels["ray.io/node-type"] == "head":
                assert "nvidia.com/gpu" not in limits, where
                continue
            assert limits["nvidia.com/gpu"] == 1, where
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, where
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ], where


def test_checkpoint_pin_is_also_an_annotation() -> None:
    assert "annotations" not in one(rendered("defaults"), "RayService")["metadata"]
    metadata = one(rendered("everything"), "RayService")["metadata"]
    assert metadata["annotations"] == {"raysight.io/checkpoint-sha256": "ab" * 32}


def test_tls_secret_is_mounted_read_only_for_serving() -> None:
    rayservice = one(rendered("everything"), "RayService")
    for where, group, _ in k8s_checks.ray_groups(rayservice):
        spec = group["template"]["spec"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls"]
        assert mount == {"name": "tls", "mountPath": "/etc/raysight/tls", "readOnly": True}, where
        (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "raysight-tls", where
    rayservice = one(rendered("defaults"), "RayService")
    for container in ray_containers(rayservice):
        assert all(m["name"] != "tls" for m in container["volumeMounts"])


def test_haproxy_grpc_faces_the_service_and_tls_terminates_there() -> None:
    # Ray binds HAProxy's gRPC frontend beside Serve's HTTP port, on 127.0.0.1: the launcher
    # must move it, or the Service reaches nothing.
    for container in ray_containers(one(rendered("defaults"), "RayService")):
        env = env_of(container)
        assert env["RAYSIGHT_HAPROXY_GRPC_HOST"] == "0.0.0.0"
        assert not any(name.startswith("RAYSIGHT_TLS_") for name in env)
    for container in ray_containers(one(rendered("everything"), "RayService")):
        env = env_of(container)
        assert env["RAYSIGHT_TLS_CERT"] == "/etc/raysight/tls/tls.crt"
        assert env["RAYSIGHT_TLS_KEY"] == "/etc/raysight/tls/tls.key"
        assert env["RAYSIGHT_TLS_CLIENT_CA"] == "/etc/raysight/tls/ca.crt"
    server_only = render({"tls": {"secretName": "raysight-tls"}})
    for container in ray_containers(one(server_only, "RayService")):
        assert "RAYSIGHT_TLS_CLIENT_CA" not in env_of(container)
    worker = ray_containers(one(server_only, "RayService"))[1]
    # The kubelet's gRPC probe has no TLS.
    assert worker["readinessProbe"]["tcpSocket"] == {"port": 9000}
    assert "grpc" not in worker["readinessProbe"]


def test_dockerfile_runs_haproxy_through_the_launcher() -> None:
    text = (REPO / "Dockerfile").read_text()
    launcher = "/home/ray/anaconda3/bin/raysight-haproxy"
    assert f"ENV RAY_SERVE_HAPROXY_BINARY_PATH={launcher}" in text
    assert f"test -x {launcher}" in text  # the build fails if pip put it elsewhere
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["raysight-haproxy"] == "raysight.serve.haproxy_launch:main"


def test_token_authentication_is_a_value() -> None:
    for variant in ("defaults", "cpu"):
        for obj in kinds(rendered(variant), "RayService") + kinds(rendered(variant), "RayJob"):
            cluster = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
            assert "authOptions" not in cluster
            for container in ray_containers(obj):
                assert env_of(container)["RAY_AUTH_MODE"] == "disabled"
    rayservice = one(rendered("everything"), "RayService")
    assert rayservice["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    for container in ray_containers(rayservice):
        assert env_of(container)["RAY_AUTH_MODE"] == "token"
    rayjob = one(rendered("alternatives"), "RayJob")
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token",
        "secretName": "ray-token",
    }


def test_grpc_service_reaches_the_serving_workers() -> None:
    objects = rendered("defaults")
    (service,) = [s for s in kinds(objects, "Service") if s["metadata"]["name"] == "raysight-grpc"]
    assert service["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in service["spec"]
    assert service["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": 9000,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        }
    ]
    selector = service["spec"]["selector"]
    assert selector["ray.io/serve"] == "true"
    assert selector["ray.io/node-type"] == "worker"
    (service,) = [
        s for s in kinds(rendered("alternatives"), "Service") if "grpc" in s["metadata"]["name"]
    ]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["clusterIP"] == "None"


def test_disruption_budget_covers_the_serving_workers() -> None:
    pdb = one(rendered("defaults"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = serve_group(one(rendered("defaults"), "RayService"))["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == {**labels, "ray.io/node-type": "worker"}


def test_network_policy_admits_only_grpc_metrics_and_the_operator() -> None:
    policies = {p["metadata"]["name"]: p for p in kinds(rendered("cpu"), "NetworkPolicy")}
    assert set(policies) == {"raysight-serve", "raysight-train"}
    for component, policy in ((c, policies[f"raysight-{c}"]) for c in ("serve", "train")):
        own, *outside = policy["spec"]["ingress"]
        assert "ports" not in own  # the same Ray cluster: every port
        (peer,) = own["from"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        ports = [p["port"] for rule in outside for p in rule["ports"]]
        expected = (
            ["grpc", "metrics", "dashboard"] if component == "serve" else ["metrics", "dashboard"]
        )
        assert ports == expected
        assert outside[-1]["from"][0]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "kuberay-operator"
        }


# ---- the RayJob -------------------------------------------------------------------------------


def test_rayjob_runs_the_train_entrypoint_once() -> None:
    spec = one(rendered("everything"), "RayJob")["spec"]
    assert spec["entrypoint"] == "python services/train_job.py --config /etc/raysight/train.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 86400
    assert "activeDeadlineSeconds" not in one(rendered("gpu"), "RayJob")["spec"]
    assert "submitterPodTemplate" not in one(rendered("alternatives"), "RayJob")["spec"]
    assert kinds(rendered("defaults"), "RayJob") == []


@pytest.mark.parametrize("variant", ["gpu", "cpu", "alternatives"])
def test_rendered_train_config_is_a_train_config(variant: str, tmp_path: Any) -> None:
    objects = rendered(variant)
    (configmap,) = kinds(objects, "ConfigMap")
    path = tmp_path / "train.yaml"
    path.write_text(configmap["data"]["train.yaml"])
    config = TrainConfig.from_yaml(path)
    worker_gpus = chart_values(VARIANTS[variant]())["train"]["worker"]["gpus"]
    assert config.gpu is (worker_gpus > 0)
    # Mounted where the entrypoint reads it, on the head and every worker.
    for where, group, _ in k8s_checks.ray_groups(one(objects, "RayJob")):
        spec = group["template"]["spec"]
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["config"]["mountPath"] == "/etc/raysight", where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"], where


def test_checkpoint_volume_is_mounted_where_the_config_writes() -> None:
    rayjob = one(rendered("gpu"), "RayJob")
    for where, group, _ in k8s_checks.ray_groups(rayjob):
        spec = group["template"]["spec"]
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["checkpoints"]["mountPath"] == "/checkpoints", where
        assert mounts["data"]["readOnly"] is True, where
        claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in spec["volumes"]}
        assert claims["checkpoints"]["claimName"] == "raysight-checkpoints", where
    worker = ray_containers(one(rendered("gpu"), "RayService"))[1]
    mounts = {m["name"]: m for m in worker["volumeMounts"]}
    assert mounts["checkpoints"]["readOnly"] is True  # serving only reads


# ---- monitoring -------------------------------------------------------------------------------


def test_monitoring_is_a_value() -> None:
    monitored = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert not monitored & {o["kind"] for o in rendered("defaults")}
    monitor = one(rendered("everything"), "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    monitor = one(rendered("alternatives"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert not kinds(rendered("alternatives"), "PodMonitor")


# ---- what the chart refuses to render ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve": {"worker": {"replicas": 2}}}, "worker pod(s)"),
        (
            {"serve": {"autoscaling": {"min_replicas": 0, "max_replicas": 2}}},
            "0 Serve replica(s) for 1 worker pod(s)",
        ),
        ({"serve": {"drainSeconds": 90}}, "terminationGracePeriodSeconds"),
        (
            {"tls": {"secretName": "t"}, "serve": {"ingress": "proxy"}},
            "TLS terminates in HAProxy",
        ),
        ({"tls": {"requireClientCertificate": True}}, "needs tls.secretName"),
        ({"train": {"enabled": True}}, "train.config.output (/checkpoints/latest)"),
        (
            {
                "train": {
                    "enabled": True,
                    "worker": {"replicas": 1, "gpus": 1},
                    "config": {"workers": 2, "output": "s3://b/o", "storage_path": "s3://b/r"},
                }
            },
            "exceeds the 1 GPU(s)",
        ),
    ],
)
def test_refuses_settings_that_cannot_work(values: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_more_worker_pods_than_replicas_pass_without_grpc_liveness() -> None:
    values = {"serve": {"worker": {"replicas": 2}, "probes": {"liveness": {"enabled": False}}}}
    assert serve_group(one(render(values), "RayService"))["replicas"] == 2


def test_message_cap_reaches_the_replicas_and_the_classic_proxy() -> None:
    for variant in ("defaults", "alternatives"):
        rayservice = one(rendered(variant), "RayService")
        cap = str(chart_values(VARIANTS[variant]())["serve"]["maxMessageBytes"])
        (deployment,) = k8s_checks.serve_config(rayservice)["applications"][0]["deployments"]
        env_vars = deployment["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env_vars == replica_env(int(cap)), variant
        for container in ray_containers(rayservice):
            assert env_of(container)["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == cap, variant
    assert cap == "67108864"  # an integer, never Helm's float notation
    rayjob = one(rendered("cpu"), "RayJob")
    assert all("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE" not in env_of(c) for c in ray_containers(rayjob))
