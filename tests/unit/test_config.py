from pathlib import Path

import pytest

from raysight.config import TrainConfig, parse_assignment
from raysight.errors import ConfigError


def test_from_dict_converts_lists_and_ints() -> None:
    cfg = TrainConfig.from_dict({"image_size": [64, 48], "lr": 1, "model_args": {"width": 16}})
    assert cfg.image_size == (64, 48)
    assert isinstance(cfg.lr, float)
    assert cfg.model_args == {"width": 16}


def test_round_trip_through_plain_values() -> None:
    cfg = TrainConfig(dataset="mnist", data_dir="/d", image_size=(28, 28), epochs=7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochz": 1}, r"unknown field.*epochz"),
        ({"epochs": "five"}, "epochs must be int"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"gpu": 1}, "gpu must be bool"),
        ({"lr": True}, "lr must be a number"),
        ({"augment": "rotate"}, "augment must be one of"),
        ({"image_size": [28]}, "image_size must be a list of 2"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 65, "workers": 2}, "divisible by workers"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"lr": float("nan")}, "lr must be a finite number, got nan"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number, got inf"),
        ({"cpus_per_worker": float("-inf")}, "cpus_per_worker must be a finite number"),
    ],
)
def test_bad_values_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_yaml_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("dataset: mnist\nepochs: 3\nworkers: 1\n")
    cfg = TrainConfig.from_yaml(path, {"epochs": 9})
    assert (cfg.dataset, cfg.epochs, cfg.workers) == ("mnist", 9, 1)


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        TrainConfig.from_yaml(path)


def test_repository_configs_load() -> None:
    services = Path(__file__).resolve().parents[2] / "services"
    for name in ("digits.yaml", "train.yaml"):
        assert TrainConfig.from_yaml(services / name).epochs > 0


def test_parse_assignment_reads_yaml_values() -> None:
    assert parse_assignment("epochs=10") == ("epochs", 10)
    assert parse_assignment("image-size=[64, 64]") == ("image_size", [64, 64])
    assert parse_assignment("gpu=true") == ("gpu", True)
    assert parse_assignment("padding=same") == ("padding", "same")
    for bad in ("epochs", "=3"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_assignment(bad)
