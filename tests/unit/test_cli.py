from pathlib import Path

import pytest

from raysight import cli
from raysight.config import TrainConfig


def _config(argv: list[str]) -> TrainConfig:
    args = cli._parser().parse_args(["train", *argv])
    return cli._config_from_args(args)


def test_every_config_field_has_a_documented_flag() -> None:
    help_text = cli._parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in (
        "--dataset",
        "--data-dir",
        "--image-size",
        "--model-arg",
        "--epochs",
        "--workers",
        "--gpu",
        "--max-failures",
        "--label-smoothing",
        "--output",
    ):
        assert flag in help_text
    docs = cli._field_help()
    assert "Ray Train workers" in docs["workers"]


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: mnist\nepochs: 3\nmodel_args: {width: 8}\n")
    cfg = _config(
        [
            "--config",
            str(path),
            "--epochs",
            "5",
            "--gpu",
            "--image-size",
            "32",
            "32",
            "--model-arg",
            "padding=same",
        ]
    )
    assert (cfg.dataset, cfg.epochs, cfg.gpu, cfg.image_size) == ("mnist", 5, True, (32, 32))
    assert cfg.model_args == {"padding": "same"}  # a flag replaces the file's mapping whole


def test_defaults_without_file() -> None:
    assert _config([]) == TrainConfig()


def test_bad_flag_value_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert "epochs must be positive" in capsys.readouterr().err


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "convnet" in out and "resnet18" in out
