"""Offline checks of rendered Kubernetes objects: a schema for every kind, ports that agree,
and a Serve config that Ray Serve itself accepts.

Each check raises CheckError naming the object and what is wrong, so the chart's tests and
the negative tests (a defect planted in a copy of the chart) call the same functions.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.conftest import SHARED

KUBE_VERSIONS = ("1.29", "1.33")
"""Kubernetes releases the built-in kinds are validated against: the chart's kubeVersion
floor and 1.33."""

SCHEMAS = SHARED / "schemas"
CRDS = {
    ("ray.io/v1", "RayService"): "kuberay/ray.io_rayservices.yaml",
    ("ray.io/v1", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
    ("ray.io/v1", "RayCluster"): "kuberay/ray.io_rayclusters.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "prometheus-operator/monitoring.coreos.com_podmonitors.yaml"
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml"
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml"
    ),
}
"""(apiVersion, kind) -> its CustomResourceDefinition under ../shared/schemas (KubeRay 1.7.0,
the Prometheus Operator)."""

# Labels KubeRay adds to the pods it makes from a RayService's templates; selectors may use
# them. Worker pods of a RayService start with ray.io/serve "true" and stay so.
KUBERAY_WORKER_LABELS = {"ray.io/node-type": "worker", "ray.io/serve": "true"}
KUBERAY_HEAD_LABELS = {"ray.io/node-type": "head"}


class CheckError(AssertionError):
    """A rendered object fails a check; the message names the object."""


def name_of(obj: dict[str, Any]) -> str:
    """Kind/name, as error messages name an object."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---- schemas ------------------------------------------------------------------------------


def crds_available() -> bool:
    """Whether ../shared holds every CRD the checks need."""
    return all((SCHEMAS / path).is_file() for path in CRDS.values())


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """A validator for the CRD's openAPIV3Schema at `api_version`, closed as the API server
    closes it under strict field validation: an object schema that lists its properties and
    does not preserve unknown fields refuses any other field. (Without strict validation, as
    `helm install` sends objects, the server drops such a field with only a warning.)"""
    group, version = api_version.split("/")
    # The C loader: these files run to thousands of lines.
    crd = yaml.load((SCHEMAS / CRDS[(api_version, kind)]).read_text(), Loader=yaml.CSafeLoader)
    if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
        raise CheckError(f"{CRDS[(api_version, kind)]} does not define {api_version} {kind}")
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return jsonschema.Draft202012Validator(_closed(entry["schema"]["openAPIV3Schema"]))
    raise CheckError(f"the {kind} CRD has no version {version}")


def _closed(schema: Any) -> Any:
    """A copy of an OpenAPI schema in which listed properties are the only ones allowed."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    return out


def validate_builtin(obj: dict[str, Any], kube_version: str) -> None:
    """Check a built-in kind against Kubernetes' own schema (strict: unknown fields fail).

    Raises:
        CheckError: the object is invalid, or no schema of `kube_version` covers its kind.
    """
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise CheckError(f"{name_of(obj)}: no validator covers it ({exc.message})") from exc
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(map(str, exc.absolute_path)) or "(top)"
        raise CheckError(
            f"{name_of(obj)} (Kubernetes {kube_version}): {where}: {exc.message}"
        ) from exc


def validate_custom(obj: dict[str, Any], kube_version: str) -> None:
    """Check a custom resource against its CRD (whose pod templates are Kubernetes' own
    PodTemplateSpec schema) and its metadata as Kubernetes ObjectMeta.

    Raises:
        CheckError: the object is invalid.
    """
    errors = sorted(
        crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise CheckError(f"{name_of(obj)}: " + "; ".join(lines))
    # The CRDs leave metadata open; the API server still checks it.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        validate_builtin(holder, kube_version)
    except CheckError as exc:
        raise CheckError(f"{name_of(obj)} metadata: {exc}") from exc


# What the API server requires of names and labels, which the schemas leave to it.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_names(obj: dict[str, Any]) -> None:
    """The object's name is a DNS subdomain (a DNS label of at most 63 characters for a
    Service, whose name becomes a host name), and its label values are valid.

    Raises:
        CheckError: naming the offending name or label.
    """
    metadata = obj.get("metadata", {})
    name = str(metadata.get("name", ""))
    if obj.get("kind") == "Service":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            raise CheckError(f"{name_of(obj)}: a Service name must be a DNS label (RFC 1035)")
    elif len(name) > 253 or not _SUBDOMAIN.match(name):
        raise CheckError(f"{name_of(obj)}: the name must be a DNS subdomain (RFC 1123)")
    for key, value in (metadata.get("labels") or {}).items():
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            raise CheckError(f"{name_of(obj)}: label {key}={value!r} is not a valid label value")


def validate_object(obj: dict[str, Any], kube_version: str = KUBE_VERSIONS[-1]) -> None:
    """Check one object: custom kinds against their CRD, built-in kinds against Kubernetes,
    and the names and labels of both as the API server does.

    Raises:
        CheckError: the object is invalid or no validator covers its kind.
    """
    check_names(obj)
    if (obj.get("apiVersion"), obj.get("kind")) in CRDS:
        validate_custom(obj, kube_version)
    else:
        validate_builtin(obj, kube_version)


def validate_all(
    objects: list[dict[str, Any]], kube_versions: tuple[str, ...] = KUBE_VERSIONS
) -> None:
    """Check every object against every Kubernetes version in `kube_versions`.

    Raises:
        CheckError: the first object that is invalid or that no validator covers.
    """
    for obj in objects:
        for version in kube_versions:
            validate_object(obj, version)


# ---- where the pods are -------------------------------------------------------------------


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every Ray node group and the RayJob's submitter."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj.get("kind") == "RayService":
            cluster = spec["rayClusterConfig"]
        elif obj.get("kind") == "RayJob":
            cluster = spec["rayClusterSpec"]
            if "submitterPodTemplate" in spec:
                yield f"{name_of(obj)} submitter", spec["submitterPodTemplate"]
        else:
            continue
        yield f"{name_of(obj)} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name_of(obj)} group {group['groupName']}", group["template"]


def ray_groups(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(where, group spec, labels KubeRay gives its pods) of a RayService's or RayJob's head
    and worker groups; the labels include the template's own."""
    spec = obj["spec"]
    cluster = spec["rayClusterConfig"] if obj["kind"] == "RayService" else spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    labels = head["template"].get("metadata", {}).get("labels", {})
    yield f"{name_of(obj)} head", head, {**labels, **KUBERAY_HEAD_LABELS}
    for group in cluster.get("workerGroupSpecs", []):
        labels = group["template"].get("metadata", {}).get("labels", {})
        worker = dict(KUBERAY_WORKER_LABELS)
        if obj["kind"] != "RayService":
            del worker["ray.io/serve"]
        yield f"{name_of(obj)} group {group['groupName']}", group, {**labels, **worker}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _container_port(container: dict[str, Any], name: str) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == name:
            return int(port["containerPort"])
    return None


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [obj for obj in objects if obj.get("kind") == kind]
    if len(found) > 1:
        raise CheckError(f"expected at most one {kind}, found {len(found)}")
    return found[0] if found else None


# ---- the Serve config -----------------------------------------------------------------------


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The RayService's serveConfigV2, parsed."""
    text = rayservice["spec"].get("serveConfigV2")
    if not isinstance(text, str):
        raise CheckError(f"{name_of(rayservice)}: serveConfigV2 must be a YAML string")
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise CheckError(f"{name_of(rayservice)}: serveConfigV2 is not a mapping")
    return config


def check_serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    """Ray Serve's own schema accepts the config, and everything it names imports.

    Returns:
        The parsed config.

    Raises:
        CheckError: the schema refuses it, or an import path or servicer function is missing.
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = serve_config(rayservice)
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        raise CheckError(f"{name_of(rayservice)}: Ray Serve refuses serveConfigV2: {exc}") from exc
    for app in config["applications"]:
        _importable(app["import_path"], ":", f"{name_of(rayservice)} import_path")
    for path in config.get("grpc_options", {}).get("grpc_servicer_functions", []):
        _importable(path, ".", f"{name_of(rayservice)} grpc_servicer_functions")
    return config


def _importable(path: str, separator: str, where: str) -> None:
    module, _, attribute = path.rpartition(separator)
    try:
        getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CheckError(f"{where}: {path} does not import: {exc}") from exc


# ---- ports ---------------------------------------------------------------------------------


Pod = tuple[str, dict[str, str], dict[str, Any]]
"""(where, labels, Ray container) of one Ray node group."""


def check_ports(objects: list[dict[str, Any]]) -> None:
    """Every place that names a port agrees with the one that opens it.

    The Serve config's gRPC port is the serving workers' container port "grpc", every gRPC
    probe's port and what the gRPC Service reaches; its HTTP port is the head's port "serve";
    rayStartParams' metrics and dashboard ports are the containers' "metrics" and
    "dashboard". Every Service, NetworkPolicy and monitor names ports that the pods it selects
    have.

    Raises:
        CheckError: the first disagreement.
    """
    pods: list[Pod] = []
    for obj in (o for o in objects if o.get("kind") in ("RayService", "RayJob")):
        for where, group, labels in ray_groups(obj):
            container = group["template"]["spec"]["containers"][0]
            pods.append((where, labels, container))
            _check_ray_start_ports(where, group.get("rayStartParams", {}), container)
    grpc_port = None
    rayservice = _one(objects, "RayService")
    if rayservice is not None:
        config = serve_config(rayservice)
        _check_serving_ports(rayservice, config)
        grpc_port = int(config["grpc_options"]["port"])
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Service":
            _check_service(obj, pods, grpc_port)
        elif kind == "NetworkPolicy":
            _check_network_policy(obj, pods)
        elif kind == "PodMonitor":
            _check_pod_monitor(obj, pods)
        elif kind == "ServiceMonitor":
            _check_service_monitor(obj, objects)


def _selected(obj: dict[str, Any], selector: dict[str, str], pods: list[Pod]) -> list[Pod]:
    chosen = [pod for pod in pods if _selects(selector, pod[1])]
    if not chosen:
        raise CheckError(f"{name_of(obj)} selects no Ray pod")
    return chosen


def _check_service(service: dict[str, Any], pods: list[Pod], grpc_port: int | None) -> None:
    for where, _, container in _selected(service, service["spec"].get("selector", {}), pods):
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                number = _container_port(container, target)
                if number is None:
                    raise CheckError(
                        f"{name_of(service)} targets port {target!r}, which {where} lacks"
                    )
            else:
                number = int(target)
                if number not in {int(p["containerPort"]) for p in container.get("ports", [])}:
                    raise CheckError(
                        f"{name_of(service)} targets port {number}, which {where} does not open"
                    )
            if port.get("name") == "grpc" and number != grpc_port:
                raise CheckError(
                    f"{name_of(service)} sends gRPC to {number}, Serve listens on {grpc_port}"
                )


def _check_network_policy(policy: dict[str, Any], pods: list[Pod]) -> None:
    selected = _selected(policy, policy["spec"]["podSelector"].get("matchLabels", {}), pods)
    for rule in policy["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            name = port.get("port")
            if isinstance(name, str) and all(
                _container_port(c, name) is None for *_, c in selected
            ):
                raise CheckError(f"{name_of(policy)} admits port {name!r}, which no pod has")


def _check_pod_monitor(monitor: dict[str, Any], pods: list[Pod]) -> None:
    selected = _selected(monitor, monitor["spec"]["selector"].get("matchLabels", {}), pods)
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for where, _, container in selected:
            if _container_port(container, endpoint["port"]) is None:
                raise CheckError(
                    f"{name_of(monitor)} scrapes port {endpoint['port']!r}, which {where} lacks"
                )


def _check_service_monitor(monitor: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    selector = monitor["spec"]["selector"].get("matchLabels", {})
    services = [
        s
        for s in objects
        if s.get("kind") == "Service" and _selects(selector, s["metadata"].get("labels", {}))
    ]
    if not services:
        raise CheckError(f"{name_of(monitor)} selects no Service")
    for endpoint in monitor["spec"]["endpoints"]:
        for service in services:
            if endpoint["port"] not in {p.get("name") for p in service["spec"]["ports"]}:
                raise CheckError(
                    f"{name_of(monitor)} scrapes port {endpoint['port']!r}, "
                    f"which {name_of(service)} lacks"
                )


def _check_ray_start_ports(where: str, params: dict[str, Any], container: dict[str, Any]) -> None:
    for param, name in (("metrics-export-port", "metrics"), ("dashboard-port", "dashboard")):
        if param not in params:
            continue
        opened = _container_port(container, name)
        if opened != int(params[param]):
            raise CheckError(
                f"{where}: ray start opens {param} {params[param]} but the container's port "
                f"{name!r} is {opened}"
            )


def _check_serving_ports(rayservice: dict[str, Any], config: dict[str, Any]) -> None:
    grpc_port = int(config["grpc_options"]["port"])
    http_port = int(config["http_options"]["port"])
    for where, group, labels in ray_groups(rayservice):
        container = group["template"]["spec"]["containers"][0]
        if labels.get("ray.io/node-type") == "head":
            if _container_port(container, "serve") != http_port:
                raise CheckError(
                    f"{where}: the port named 'serve' must be Serve's HTTP port {http_port}"
                )
            continue
        if _container_port(container, "grpc") != grpc_port:
            raise CheckError(
                f"{where}: the port named 'grpc' is {_container_port(container, 'grpc')}, "
                f"Serve listens on {grpc_port}"
            )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container.get(probe, {}).get("grpc")
            if action is not None and int(action["port"]) != grpc_port:
                raise CheckError(
                    f"{where}: {probe} calls port {action['port']}, Serve listens on {grpc_port}"
                )


# ---- pods ----------------------------------------------------------------------------------


def check_pods_hardened(objects: list[dict[str, Any]]) -> None:
    """Every container the chart defines has requests and limits for CPU and memory, runs as
    non-root without privilege escalation or capabilities, and every pod uses the chart's
    ServiceAccount.

    Raises:
        CheckError: the first container or pod that does not.
    """
    accounts = {o["metadata"]["name"] for o in objects if o.get("kind") == "ServiceAccount"}
    containers = []
    for where, template in pod_templates(objects):
        spec = template["spec"]
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            raise CheckError(f"{where}: the pod must set runAsNonRoot")
        if accounts and spec.get("serviceAccountName") not in accounts:
            raise CheckError(
                f"{where}: runs as {spec.get('serviceAccountName')!r}, not the chart's"
            )
        containers += [(f"{where} {c['name']}", c) for c in spec["containers"]]
    for obj in objects:
        options = obj.get("spec", {}).get("rayClusterConfig", {}).get("autoscalerOptions")
        if options is not None:
            containers.append((f"{name_of(obj)} autoscaler", options))
    for where, container in containers:
        resources = container.get("resources", {})
        for side in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(side, {}))
            if missing:
                raise CheckError(f"{where}: no {side} for {', '.join(sorted(missing))}")
        context = container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            raise CheckError(f"{where}: allowPrivilegeEscalation must be false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            raise CheckError(f"{where}: must drop ALL capabilities")


def copy_chart(source: Path, destination: Path) -> Path:
    """A copy of the chart to plant defects in; returns its directory."""
    target = destination / source.name
    shutil.copytree(source, target)
    return target
