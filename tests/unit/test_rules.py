"""The chart's recording rules and alerts under promtool (syntax, then the unit tests in
deploy/prometheus/rules_test.yaml), every alert tested both ways, and the dashboard's queries
checked against the rules they read."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import kinds, render
from tests.conftest import REPO, require_tool
from tests.promql import (
    DASHBOARD,
    RULES_TEST,
    Query,
    alert_names,
    dashboard_queries,
    promtool,
    recording_rules,
    rules_of,
    rules_spec,
    substitute,
    uncovered_alerts,
    write_rules,
)

ALERTS = {
    "RaysightErrorRatioHigh",
    "RaysightLatencyP99High",
    "RaysightNoReadyReplica",
    "RaysightCheckpointSwapRefused",
    "RaysightClassMixDrifted",
    "RaysightTrainingStalled",
    "RaysightTrainingDiverged",
}
RUNBOOKS = "https://github.com/raysight/raysight/blob/main/deploy/README.md"
README = REPO / "deploy" / "README.md"  # the file RUNBOOKS links to
# An ATX heading (its optional closing hashes dropped), and an explicit anchor inside one.
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)(?:\s+#+)?\s*$")
EXPLICIT_ANCHOR = re.compile(r'<a\s+(?:id|name)="([^"]+)"')
# A recording rule's name: level:metric:operations (https://prometheus.io/docs/practices/rules/).
RULE_NAME = re.compile(r"[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")
RECORDED = re.compile(r"\b[a-z_][a-z0-9_]*(?::[a-z0-9_]+)+\b")
# What the dashboard's variables stand for when its queries are checked.
VARIABLES = {"model": "convnet-digits", "run": "digits", "__rate_interval": "1m"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return rules_spec()


@pytest.fixture
def needs_promtool() -> None:
    require_tool("promtool")


def _check(spec: dict[str, Any], directory: Path) -> str:
    """promtool's verdict on `spec`: empty when it passes, else its complaint."""
    result = promtool("check", "rules", write_rules(spec, directory))
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_the_rendered_rules_pass_promtool_check(
    spec: dict[str, Any], tmp_path: Path, needs_promtool: None
) -> None:
    assert _check(spec, tmp_path) == ""


def test_the_rules_pass_their_promtool_unit_tests(
    spec: dict[str, Any], tmp_path: Path, needs_promtool: None
) -> None:
    write_rules(spec, tmp_path)
    shutil.copy(RULES_TEST, tmp_path)
    result = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_bad_expression_fails_promtool_check(
    spec: dict[str, Any], tmp_path: Path, needs_promtool: None
) -> None:
    planted = copy.deepcopy(spec)
    # The closing parenthesis of sum is missing.
    planted["groups"][0]["rules"][0]["expr"] = "sum by (model) (rate(ray_raysight_requests[5m])"
    complaint = _check(planted, tmp_path)
    assert "unclosed left parenthesis" in complaint


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet(
    spec: dict[str, Any],
) -> None:
    assert set(alert_names(spec)) == ALERTS
    assert uncovered_alerts(spec, yaml.safe_load(RULES_TEST.read_text())) == {}


def test_an_alert_without_both_cases_fails_the_coverage_check(spec: dict[str, Any]) -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    planted = copy.deepcopy(spec)
    planted["groups"][-1]["rules"].append({"alert": "RaysightPlanted", "expr": "vector(1)"})
    assert uncovered_alerts(planted, tests) == {"RaysightPlanted": ["fires", "stays quiet"]}
    # Drop the cases where RaysightNoReadyReplica stays quiet.
    for case in tests["tests"]:
        case["alert_rule_test"] = [
            check
            for check in case.get("alert_rule_test", [])
            if check["alertname"] != "RaysightNoReadyReplica" or check["exp_alerts"]
        ]
    assert uncovered_alerts(spec, tests) == {"RaysightNoReadyReplica": ["stays quiet"]}


def test_every_alert_explains_itself_and_links_its_runbook(spec: dict[str, Any]) -> None:
    for rule in rules_of(spec):
        if "alert" not in rule:
            continue
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert annotations["summary"] and annotations["description"], name
        assert "{{ $labels." in annotations["summary"], name  # Helm left them for Prometheus
        assert annotations["runbook_url"] == f"{RUNBOOKS}#alert-{name.lower()}"


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of `markdown`, so a runbook link can be checked
    without GitHub: each heading's slug (its visible text lower-cased, punctuation dropped,
    spaces made hyphens, "-1", "-2"... on repeats) and any `<a id>` or `<a name>` in it.
    Lines inside fenced code blocks are not headings."""
    anchors: set[str] = set()
    repeats: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading is None:
            continue
        text = heading.group(1)
        anchors.update(EXPLICIT_ANCHOR.findall(text))
        visible = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", re.sub(r"<[^>]+>", "", text))
        slug = re.sub(r"[^\w\- ]", "", visible.strip().lower()).replace(" ", "-")
        count = repeats.get(slug, 0)
        repeats[slug] = count + 1
        anchors.add(f"{slug}-{count}" if count else slug)
    return anchors


def _unresolved_runbooks(spec: dict[str, Any], anchors: set[str]) -> dict[str, str | None]:
    """Alerts whose runbook_url is not RUNBOOKS#ANCHOR with ANCHOR among `anchors`, each with
    its URL (None where it has none)."""
    unresolved = {}
    for rule in rules_of(spec):
        if "alert" not in rule:
            continue
        url = rule.get("annotations", {}).get("runbook_url")
        page, _, fragment = str(url).partition("#")
        if page != RUNBOOKS or fragment not in anchors:
            unresolved[rule["alert"]] = url
    return unresolved


def test_github_anchors_are_computed_as_github_does() -> None:
    markdown = "\n".join(
        [
            "# Deploying raysight",
            "## Alerts and runbooks",
            '### <a id="alert-x"></a>RaysightX (critical)',
            "## Alerts and runbooks",
            "## `make test`, offline [in CI](ci.md) ##",
            "```sh",
            "# a shell comment, not a heading",
            "```",
        ]
    )
    assert _github_anchors(markdown) == {
        "deploying-raysight",
        "alerts-and-runbooks",
        "alert-x",
        "raysightx-critical",
        "alerts-and-runbooks-1",
        "make-test-offline-in-ci",
    }


def test_every_runbook_link_lands_on_a_readme_heading(spec: dict[str, Any]) -> None:
    text = README.read_text()
    assert _unresolved_runbooks(spec, _github_anchors(text)) == {}
    # Planted: one runbook's heading anchor renamed, as an edit to the README might.
    old = '<a id="alert-raysightnoreadyreplica">'
    assert text.count(old) == 1
    planted = text.replace(old, '<a id="alert-raysightnoreplica">')
    assert _unresolved_runbooks(spec, _github_anchors(planted)) == {
        "RaysightNoReadyReplica": f"{RUNBOOKS}#alert-raysightnoreadyreplica"
    }


def test_recording_rules_are_named_level_metric_operation(spec: dict[str, Any]) -> None:
    names = {name for name, _ in recording_rules(spec)}
    assert {
        "model:raysight_requests:rate5m",
        "model:raysight_requests_errors:ratio_rate5m",
        "model_quantile:raysight_request_duration_seconds:histogram_quantile_rate5m",
        "model_version:raysight_predictions:drift_distance1h",
        "run_model:raysight_train_samples_per_second:max",
    } <= names
    for name in names:
        assert RULE_NAME.fullmatch(name), name


def test_thresholds_and_labels_come_from_the_values() -> None:
    values = {
        "monitoring": {"rules": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
        "alerts": {
            "errorRatio": 0.02,
            "p99LatencySeconds": 1.5,
            "forMinutes": 10,
            "trainStalledMinutes": 90,
            "classDriftDistance": 0.4,
            "minRequestRate": 3,
        },
    }
    (rule,) = kinds(render(values), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    alerts = {r["alert"]: r for r in rules_of(rule["spec"]) if "alert" in r}
    error = alerts["RaysightErrorRatioHigh"]
    assert "> 0.02" in error["expr"] and ">= 3" in error["expr"] and error["for"] == "10m"
    assert "> 1.5" in alerts["RaysightLatencyP99High"]["expr"]
    assert "> 0.4" in alerts["RaysightClassMixDrifted"]["expr"]
    stalled = alerts["RaysightTrainingStalled"]
    assert "[90m]" in stalled["expr"] and "offset 90m" in stalled["expr"]
    assert "90 minutes" in stalled["annotations"]["description"]


def test_no_prometheus_rule_unless_enabled() -> None:
    assert kinds(render({"monitoring": {"rules": {"enabled": False}}}), "PrometheusRule") == []


# --- the dashboard --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _unknown_recorded(queries: list[Query], spec: dict[str, Any]) -> dict[str, set[str]]:
    """Series names with colons (recording rules) that the queries read but no rule makes."""
    recorded = {name for name, _ in recording_rules(spec)}
    unknown = {q.where: set(RECORDED.findall(q.expr)) - recorded for q in queries}
    return {where: names for where, names in unknown.items() if names}


def test_the_dashboard_reads_only_series_the_rules_record(
    dashboard: dict[str, Any], spec: dict[str, Any]
) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    assert _unknown_recorded(queries, spec) == {}
    planted = [*queries, Query("planted", "model:raysight_requests:rate1m")]
    assert _unknown_recorded(planted, spec) == {"planted": {"model:raysight_requests:rate1m"}}


def test_every_dashboard_query_is_valid_promql(
    dashboard: dict[str, Any], tmp_path: Path, needs_promtool: None
) -> None:
    """promtool parses each query, its variables filled in, as a recording rule."""
    queries = dashboard_queries(dashboard)
    check = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}:check", "expr": substitute(q.expr, VARIABLES)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    assert "$" not in json.dumps(check)
    assert _check(check, tmp_path) == ""


def test_the_dashboard_picks_its_data_source_and_model(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"].startswith("label_values(")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    assert {
        "Requests per second",
        "Error ratio",
        "Errors by code",
        "Request latency",
        "Queue wait",
        "Images and batch size",
        "Ready replicas",
        "Model version served",
        "Confidence distribution",
        "Predicted-class mix vs training prior",
        "Training throughput",
        "Loss",
        "Accuracy",
        "Epochs completed",
    } <= titles
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    assert "raysight_queue_wait_seconds" in exprs["Queue wait"]
    assert "raysight_batch_size" in exprs["Images and batch size"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
