"""Deploying beside other Serve applications: the merged config and the refusals, without Ray.

The `details` documents below have the shape of Ray 2.60's `GET /api/serve/applications/`
answer (ServeInstanceDetails), trimmed to the fields the runner reads.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ray.serve.schema import ServeDeploySchema

from raysight.serve import runner
from raysight.serve.grpc_services import GRPC_SERVICER_FUNCTIONS
from raysight.serve.runner import DeployError
from raysight.serve.settings import ServeSettings

# What Ray's dashboard answers while no Serve controller runs.
NO_SERVE: dict[str, Any] = {
    "controller_info": {},
    "proxies": {},
    "applications": {},
    "target_capacity": None,
}


def _config(grpc_port: int = 9000, http_port: int = 8000, **user: Any) -> dict[str, Any]:
    settings = ServeSettings.from_dict({"checkpoint": "/ckpt/a", **user})
    return runner.serve_config(settings, grpc_port=grpc_port, http_port=http_port)


def _app(name: str, prefix: str | None, source: str = "declarative") -> dict[str, Any]:
    """An application's details; only one from a config has `deployed_app_config`."""
    submitted = {"name": name, "route_prefix": prefix, "import_path": f"{name}_module:app"}
    return {
        "name": name,
        "route_prefix": prefix,
        "status": "RUNNING",
        "message": "",
        "deployed_app_config": submitted if source == "declarative" else None,
        "source": source,
        "deployments": {},
    }


def _running(
    *apps: dict[str, Any],
    grpc_port: int = 9000,
    http_port: int = 8000,
    services: list[str] | None = None,
    reflection: bool = False,
    target_capacity: float | None = None,
) -> dict[str, Any]:
    """The details of a running Serve (started with raysight's options unless told)."""
    return {
        "controller_info": {"actor_id": "c0", "actor_name": "SERVE_CONTROLLER_ACTOR"},
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": http_port, "keep_alive_timeout_s": 90},
        "grpc_options": {
            "port": grpc_port,
            "grpc_servicer_functions": list(
                GRPC_SERVICER_FUNCTIONS if services is None else services
            ),
            "request_timeout_s": None,
            "enable_reflection": reflection,
        },
        "proxies": {"n1": {"actor_id": "p1", "status": "HEALTHY"}},
        "applications": {app["name"]: app for app in apps},
        "target_capacity": target_capacity,
    }


def _names(document: dict[str, Any]) -> list[str]:
    return [app["name"] for app in document["applications"]]


def test_a_cluster_without_serve_gets_our_config_unchanged() -> None:
    config = _config()
    assert runner.merged_config(config, NO_SERVE) == config
    assert not runner.serve_running(NO_SERVE)


def test_other_applications_are_kept_as_submitted() -> None:
    other = _app("other", "/other")
    details = _running(other)
    merged = runner.merged_config(_config(), details)
    assert _names(merged) == ["other", "raysight"]
    assert merged["applications"][0] == other["deployed_app_config"]
    assert merged["applications"][1] == _config()["applications"][0]
    ServeDeploySchema.model_validate(merged)  # a document Serve's config API accepts


def test_our_previous_application_is_replaced_not_repeated() -> None:
    previous = _app("raysight", "/")
    details = _running(previous, _app("other", "/other"))
    merged = runner.merged_config(_config(top_k=2), details)
    assert _names(merged) == ["other", "raysight"]
    ours = merged["applications"][1]
    assert ours["deployments"][0]["user_config"]["top_k"] == 2


def test_applications_without_a_submitted_config_are_left_to_serve() -> None:
    # serve.run's applications are never touched by a submitted config; one being deleted
    # has no config left and must not come back.
    deleting = _app("leaving", "/leaving")
    deleting["deployed_app_config"] = None
    details = _running(_app("imperative", "/imp", source="imperative"), deleting)
    assert _names(runner.merged_config(_config(), details)) == ["raysight"]


def test_a_running_serve_keeps_its_options() -> None:
    details = _running(_app("other", "/other"), target_capacity=50.0)
    merged = runner.merged_config(_config(), details)
    for key in ("proxy_location", "http_options", "grpc_options", "target_capacity"):
        assert merged[key] == details[key], key
    # The HTTP host belongs to whoever started Serve: theirs, not our 127.0.0.1.
    assert merged["http_options"]["host"] == "0.0.0.0"
    assert "target_capacity" not in runner.merged_config(_config(), _running())


def test_inputs_are_not_modified() -> None:
    config, details = _config(), _running(_app("other", "/other"))
    before = copy.deepcopy((config, details))
    runner.merged_config(config, details)
    assert (config, details) == before


@pytest.mark.parametrize("source", ["declarative", "imperative"])
def test_another_application_at_our_route_prefix_is_refused(source: str) -> None:
    details = _running(_app("frontend", "/", source=source))
    with pytest.raises(DeployError, match=r"'frontend' already holds route prefix '/'") as err:
        runner.merged_config(_config(), details)
    assert "another route prefix, or delete it" in str(err.value)


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (_running(grpc_port=9100), "its gRPC port is 9100 (raysight asked for 9000)"),
        (_running(http_port=8100), "its HTTP port is 8100 (raysight asked for 8000)"),
        (
            _running(reflection=True),
            "its Serve's built-in gRPC reflection is True (raysight asked for False)",
        ),
        (_running(services=[]), "its gRPC ingress lacks raysight's services ("),
    ],
)
def test_options_a_running_serve_cannot_change_are_refused(
    details: dict[str, Any], expected: str
) -> None:
    with pytest.raises(DeployError) as err:
        runner.merged_config(_config(), details)
    message = str(err.value)
    assert message.startswith("Serve already runs on this cluster with options")
    assert expected in message
    assert "services/serve.yaml" in message  # and the way out


def test_every_conflict_is_named_at_once() -> None:
    details = _running(grpc_port=9100, services=GRPC_SERVICER_FUNCTIONS[:1])
    with pytest.raises(DeployError) as err:
        runner.merged_config(_config(), details)
    message = str(err.value)
    assert "gRPC port is 9100" in message
    for missing in GRPC_SERVICER_FUNCTIONS[1:]:
        assert missing in message
    assert GRPC_SERVICER_FUNCTIONS[0] not in message


def test_extra_services_on_the_running_serve_are_fine() -> None:
    details = _running(services=["other.add_servicer", *GRPC_SERVICER_FUNCTIONS])
    merged = runner.merged_config(_config(), details)
    assert merged["grpc_options"]["grpc_servicer_functions"][0] == "other.add_servicer"


def test_a_config_without_raysight_is_refused() -> None:
    config = _config()
    config["applications"][0]["name"] = "renamed"
    with pytest.raises(DeployError, match="no application named 'raysight'"):
        runner.merged_config(config, NO_SERVE)


def test_neighbours_are_the_other_applications() -> None:
    details = _running(_app("raysight", "/"), _app("zeta", "/z"), _app("alpha", "/a"))
    assert runner.neighbours(details) == ("alpha", "zeta")
    assert runner.neighbours(NO_SERVE) == ()


@pytest.mark.parametrize(
    ("proxy_class", "mode"),
    [("HAProxyManager", "haproxy"), ("ProxyActor", "proxy"), ("Unknown", None), (None, None)],
)
def test_the_proxy_class_tells_the_ingress_mode(proxy_class: str | None, mode: str) -> None:
    assert runner.ingress_mode(proxy_class) == mode


@pytest.mark.parametrize(
    ("wanted", "running"),
    [(None, "haproxy"), ("haproxy", "haproxy"), ("proxy", "proxy"), ("haproxy", None)],
)
def test_ingress_agreement_or_no_insistence_passes(wanted: str | None, running: str) -> None:
    runner.check_ingress(wanted, running)


def test_insisting_on_the_other_ingress_mode_is_refused() -> None:
    with pytest.raises(DeployError) as err:
        runner.check_ingress("haproxy", "proxy")
    message = str(err.value)
    assert "runs the proxy ingress, not haproxy" in message
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in message
    assert "Ask for the proxy ingress, or for none" in message


class FakeClient:
    """ServeSubmissionClient's three calls the runner makes, over canned details."""

    def __init__(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        self.details, self.after = before, after
        self.submitted: list[dict[str, Any]] = []

    def get_serve_details(self) -> dict[str, Any]:
        return self.details

    def deploy_applications(self, config: dict[str, Any]) -> None:
        self.submitted.append(config)
        self.details = self.after


def _healthy(details: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`details` with raysight running `config`'s user_config."""
    user_config = config["applications"][0]["deployments"][0]["user_config"]
    ours = _app("raysight", "/")
    ours["deployments"] = {
        runner.DEPLOYMENT: {"status": "HEALTHY", "deployment_config": {"user_config": user_config}}
    }
    return {**details, "applications": {**details["applications"], "raysight": ours}}


def _patch(
    monkeypatch: pytest.MonkeyPatch, client: FakeClient, modes: list[str | None]
) -> list[str]:
    """Point the runner at `client`; each mode lookup takes the next of `modes`."""
    removed: list[str] = []
    monkeypatch.setattr(runner, "_client", lambda: client)
    monkeypatch.setattr(runner, "_ingress_mode", lambda details: modes.pop(0))
    monkeypatch.setattr(runner, "remove", lambda: removed.append(runner.APP_NAME))
    return removed


def test_deploy_submits_the_merged_config_and_reports_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config()
    before = _running(_app("other", "/other"))
    client = FakeClient(before, _healthy(before, config))
    _patch(monkeypatch, client, ["proxy", "proxy"])
    deployed = runner.deploy(config, timeout_s=5)
    assert _names(client.submitted[0]) == ["other", "raysight"]
    assert deployed == runner.Deployed(ingress="proxy", neighbours=("other",))


def test_deploy_refuses_the_other_mode_before_touching_a_running_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient(_running(), _running())
    _patch(monkeypatch, client, ["proxy"])
    with pytest.raises(DeployError, match="runs the proxy ingress"):
        runner.deploy(_config(), timeout_s=5, ingress="haproxy")
    assert client.submitted == []


def test_deploy_takes_its_application_back_when_serve_started_in_the_other_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config()
    client = FakeClient(NO_SERVE, _healthy(_running(), config))
    removed = _patch(monkeypatch, client, ["haproxy"])  # looked up once Serve runs
    with pytest.raises(DeployError, match="runs the haproxy ingress, not proxy"):
        runner.deploy(config, timeout_s=5, ingress="proxy")
    assert len(client.submitted) == 1
    assert removed == ["raysight"]


def test_deploy_reports_an_unknown_mode_honestly(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    client = FakeClient(NO_SERVE, _healthy(_running(), config))
    _patch(monkeypatch, client, [None])
    deployed = runner.deploy(config, timeout_s=5, ingress="haproxy")  # cannot check: no refusal
    assert deployed == runner.Deployed(ingress=None, neighbours=())


def test_both_ports_listen_on_loopback_unless_told_otherwise() -> None:
    from raysight import cli

    settings = ServeSettings(checkpoint="/ckpt")
    assert runner.serve_config(settings)["http_options"]["host"] == "127.0.0.1"
    assert cli._parser().parse_args(["serve", "--checkpoint", "/ckpt"]).host == "127.0.0.1"
    # HAProxy binds gRPC where http_options.host says, so --host moves both.
    config = runner.serve_config(settings, host="0.0.0.0")
    assert config["http_options"]["host"] == "0.0.0.0"


@pytest.mark.parametrize(
    ("resources", "num_cpus", "num_gpus", "expected"),
    [
        ({"CPU": 2.0}, 1.0, 0.0, 2),  # the 2-core build machine
        ({"CPU": 7.0}, 2.0, 0.0, 3),  # a whole replica's CPUs or none
        ({"CPU": 0.5}, 1.0, 0.0, 1),  # always one, even where none fits
        ({"CPU": 64.0}, 1.0, 0.0, runner.AUTO_REPLICAS_MAX),
        ({"CPU": 16.0, "GPU": 2.0}, 1.0, 1.0, 2),  # GPUs, not cores, count with a GPU
        ({"CPU": 16.0, "GPU": 0.7}, 1.0, 0.1, 7),  # 0.7 / 0.1 is 6.999... in floats
        ({"CPU": 16.0}, 1.0, 1.0, 1),  # asked for a GPU the cluster lacks: Serve says so
    ],
)
def test_auto_replicas_fills_the_cluster_it_started(
    resources: dict[str, float], num_cpus: float, num_gpus: float, expected: int
) -> None:
    assert runner.auto_replicas(resources, num_cpus, num_gpus) == expected
