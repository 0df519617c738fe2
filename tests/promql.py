"""The monitoring side of the chart, for the tests: its rules, the dashboard's queries,
promtool, and a real Prometheus server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart import CHART, kinds, merged, render
from tests.conftest import REPO

RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "raysight.json"
RULES_ON = {"monitoring": {"rules": {"enabled": True}}}


def rules_spec(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, Any]:
    """The rule file (`{groups: [...]}`) of the chart's PrometheusRule, rules enabled."""
    (rule,) = kinds(render(merged(RULES_ON, values or {}), chart), "PrometheusRule")
    return rule["spec"]


def write_rules(spec: dict[str, Any], directory: Path) -> Path:
    """`spec` as directory/rules.yaml, the name rules_test.yaml gives its rule file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def rules_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of every group, in order."""
    return [rule for group in spec["groups"] for rule in group["rules"]]


def alert_names(spec: dict[str, Any]) -> list[str]:
    return [rule["alert"] for rule in rules_of(spec) if "alert" in rule]


def recording_rules(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, expression) of each recording rule; a name recurs for each quantile."""
    return [(rule["record"], rule["expr"]) for rule in rules_of(spec) if "record" in rule]


def uncovered_alerts(spec: dict[str, Any], tests: dict[str, Any]) -> dict[str, list[str]]:
    """For each alert of `spec`, the kinds of case promtool's `tests` lack: one where the
    alert fires and one where it stays quiet. Empty when every alert has both."""
    fires: dict[str, set[bool]] = {}
    for case in tests.get("tests", []):
        for check in case.get("alert_rule_test", []):
            fires.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    missing: dict[str, list[str]] = {}
    for name in alert_names(spec):
        seen = fires.get(name, set())
        lacking = [
            kind for kind, fired in (("fires", True), ("stays quiet", False)) if fired not in seen
        ]
        if lacking:
            missing[name] = lacking
    return missing


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool (found by tests.conftest.require_tool first) and capture its output."""
    return subprocess.run(
        ["promtool", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the dashboard --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL query of the dashboard and where it sits."""

    where: str  # panel title and refId, or the template variable
    expr: str
    instant: bool = False  # evaluated at the end of the time range only, as Grafana does


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel target's expression, and each `label_values(METRIC, LABEL)` template
    variable as the query that answers it: `count by (LABEL) (METRIC)`."""
    queries = [
        Query(
            f"{panel['title']} ({target['refId']})",
            target["expr"],
            instant=bool(target.get("instant")) and not target.get("range"),
        )
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"].strip())
        assert found, f"variable {variable['name']}: not label_values(...)"
        metric, label = found.groups()
        queries.append(Query(f"variable {variable['name']}", f"count by ({label}) ({metric})"))
    return queries


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's variables ($name, ${name}, [[name]]) replaced by their values,
    longest names first so that $model never eats the start of $model_version."""
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        expr = expr.replace("${" + name + "}", value).replace(f"[[{name}]]", value)
        expr = re.sub(rf"\${re.escape(name)}(?!\w)", lambda _, v=value: v, expr)
    return expr


def substituted(query: Query, variables: dict[str, str]) -> Query:
    return Query(query.where, substitute(query.expr, variables), query.instant)


# --- a real Prometheus ----------------------------------------------------------------


class Prometheus:
    """A Prometheus server started for a test; its HTTP API on 127.0.0.1:`port`."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port, self.process, self.log = port, process, log

    def api(self, path: str, **params: str) -> Any:
        """The `data` of one API call, or an AssertionError with Prometheus' error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with a JSON body
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list[Any]:
        """The series `expr` gives between `start` and `end` (Unix seconds)."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}s"
        )
        return data["result"]

    def query(self, expr: str, at: float) -> list[Any]:
        """The instant vector `expr` gives at `at` (Unix seconds)."""
        return self.api("query", query=expr, time=f"{at:.3f}")["result"]

    def values(self, query: Query, start: float, end: float) -> list[float]:
        """Every value `query` gives: over the range, or at `end` for an instant query."""
        if query.instant:
            return [float(series["value"][1]) for series in self.query(query.expr, end)]
        return [
            float(value)
            for series in self.query_range(query.expr, start, end)
            for _, value in series["values"]
        ]

    def without_data(self, queries: list[Query], start: float, end: float) -> list[Query]:
        """The queries that give no finite number between `start` and `end`."""
        return [
            query
            for query in queries
            if not any(math.isfinite(value) for value in self.values(query, start, end))
        ]


@contextmanager
def prometheus(
    config: dict[str, Any], directory: Path, port: int, timeout: float = 60.0
) -> Iterator[Prometheus]:
    """A Prometheus server running `config` with its data in `directory`, stopped on exit."""
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(port, process, log)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: Prometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"prometheus exited:\n{server.log.read_text()}"
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/-/ready", timeout=2
            ) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready in {timeout}s:\n{server.log.read_text()}")
