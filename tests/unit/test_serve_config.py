"""The Serve config documents validate against Ray Serve's own schema and agree."""

from pathlib import Path

import grpc
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from raysight.errors import CheckpointError, ConfigError, InputError
from raysight.serve.batch_policy import OverloadedError
from raysight.serve.errors import (
    INTERNAL_MESSAGE,
    ModelNotFoundError,
    NotReadyError,
    status_for,
)
from raysight.serve.grpc_services import GRPC_SERVICER_FUNCTIONS
from raysight.serve.runner import serve_config
from raysight.serve.settings import ServeSettings

SERVE_YAML = Path(__file__).resolve().parents[2] / "services" / "serve.yaml"


def test_repository_serve_yaml_is_a_valid_serve_config() -> None:
    document = yaml.safe_load(SERVE_YAML.read_text())
    schema = ServeDeploySchema.model_validate(document)
    assert schema.grpc_options.grpc_servicer_functions == GRPC_SERVICER_FUNCTIONS
    assert schema.grpc_options.enable_reflection is False
    user_config = document["applications"][0]["deployments"][0]["user_config"]
    # Every user_config key is a ServeSettings field, and the file sets all of them.
    assert ServeSettings.from_dict(user_config).to_dict() == user_config


def test_generated_config_matches_the_file_layout() -> None:
    settings = ServeSettings(checkpoint="/ckpt", max_batch_size=8)
    document = serve_config(settings, grpc_port=9100, replicas=2, num_gpus=0.5)
    ServeDeploySchema.model_validate(document)
    deployment = document["applications"][0]["deployments"][0]
    assert deployment["num_replicas"] == 2
    assert deployment["ray_actor_options"]["num_gpus"] == 0.5
    assert deployment["user_config"]["max_batch_size"] == 8
    # A swap must change only user_config: app args stay constant.
    assert document["applications"][0]["args"] == {}
    file = yaml.safe_load(SERVE_YAML.read_text())
    assert document["grpc_options"] == {**file["grpc_options"], "port": 9100}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"checkpoint": ""}, "checkpoint is required"),
        ({"checkpoint": "/c", "max_batch_size": 0}, "max_batch_size"),
        ({"checkpoint": "/c", "device": "tpu"}, "device"),
        ({"checkpoint": "/c", "preferred_batch_size": 33}, r"preferred_batch_size.*\(32\)"),
        ({"checkpoint": "/c", "preferred_batch_size": -1}, "preferred_batch_size"),
        ({"checkpoint": "/c", "batch_size": 4}, "unknown field.*batch_size"),
        ({"checkpoint": "/c", "outputs": "scores"}, "outputs: 'scores' is not an output"),
        ({"checkpoint": "/c", "outputs": "logits,prob"}, "'prob' is not an output"),
        ({"checkpoint": "/c", "outputs": ""}, "outputs must name at least one"),
        ({"checkpoint": "/c", "outputs": " , "}, "outputs must name at least one"),
        ({"checkpoint": "/c", "outputs": "logits,logits"}, "names an output twice"),
        ({"checkpoint": "/c", "outputs": ["logits"]}, "outputs must be str"),
        ({"checkpoint": "/c", "input_datatype": "FP16"}, "input_datatype must be one of"),
    ],
)
def test_bad_settings_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeSettings.from_dict(values)


@pytest.mark.parametrize(
    ("outputs", "served"),
    [
        ("logits,probabilities", ("logits", "probabilities")),
        ("probabilities", ("probabilities",)),
        (" probabilities , logits ", ("probabilities", "logits")),
    ],
)
def test_served_outputs(outputs: str, served: tuple[str, ...]) -> None:
    assert ServeSettings(checkpoint="/c", outputs=outputs).served_outputs == served


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InputError("inputs[0]: bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFoundError("unknown model"), grpc.StatusCode.NOT_FOUND),
        (NotReadyError("loading"), grpc.StatusCode.UNAVAILABLE),
        (CheckpointError("hash mismatch"), grpc.StatusCode.UNAVAILABLE),
        (OverloadedError("over the latency target"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_error_table(error: Exception, code: grpc.StatusCode) -> None:
    status = status_for(error, "ModelInfer")
    assert status.code == code
    assert status.details == str(error)


def test_unexpected_errors_hide_their_details() -> None:
    status = status_for(KeyError("/secret/path/model.py line 3"), "ModelInfer")
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == INTERNAL_MESSAGE
    assert "/secret" not in status.details
