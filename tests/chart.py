"""The Helm chart, rendered offline with Helm's own Go SDK: no helm binary, no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

CHART = REPO / "deploy" / "helm" / "raysight"
RELEASE = "raysight"
NAMESPACE = "ml"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` laid over `base` as Helm layers values files: maps merge, the rest replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def values_of(*files: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user-supplied values of `helm install -f FILE ... --set ...` (defaults not included)."""
    values: dict[str, Any] = {}
    for path in files:
        values = merged(values, yaml.safe_load(path.read_text()) or {})
    return merged(values, overrides or {})


def render_files(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    """Each template's rendered text by its path, as `helm template` makes them.

    The values are checked against the chart's values.schema.json first, as `helm install`
    does.

    Raises:
        helm_python.errors.HelmError: a schema violation or a template that fails to render.
    """
    import helm_python as helm

    loaded = helm.Chart.load(chart)
    loaded.validate_schema(values or {})
    return loaded.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart makes with `values`, in template order."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values, chart).items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [obj for obj in objects if obj.get("kind") == kind]


def chart_values(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, Any]:
    """The values the templates see: the chart's defaults with `values` laid over them."""
    import helm_python as helm

    return helm.Chart.load(chart).merge_values(values or {})


def lint_problems(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[str]:
    """What `helm lint --strict` reports as a warning or an error (infos are left out)."""
    import helm_python as helm

    report = helm.lint(chart, values or {}, strict=True, namespace=NAMESPACE)
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems + list(report["errors"])
