import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import raysight
from raysight import cli, cli_serve
from raysight.config import TrainConfig
from raysight.errors import ConfigError
from raysight.serve.settings import ServeSettings

# Fields whose flag is not simply --field-name.
FLAG_NAMES = {"model_args": "--model-arg"}


def _config(argv: list[str]) -> TrainConfig:
    args = cli._parser().parse_args(["train", *argv])
    return cli._config_from_args(args)


def _settings(argv: list[str], *, local_cluster: bool = False) -> ServeSettings:
    args = cli._parser().parse_args(["serve", *argv])
    return cli_serve._settings_from_args(args, local_cluster=local_cluster)


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # one line: wrapping is not content


@pytest.mark.parametrize(("command", "cls"), [("train", TrainConfig), ("serve", ServeSettings)])
def test_every_field_has_a_flag_with_its_help(
    command: str, cls: type, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping, so no word split at a hyphen
    help_text = _help(command, capsys)
    for field in dataclasses.fields(cls):
        flag = FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        documented = " ".join(field.metadata["help"].split())
        assert f"{flag} " in help_text, field.name
        assert documented in help_text, field.name


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


def test_serve_flags_set_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = _settings(
        [
            *("--checkpoint", "x", "--top-k", "3", "--device", "cpu"),
            *("--max-image-pixels", "100", "--max-image-bytes", "2048", "--model-name", "m"),
            *("--max-batch-size", "8", "--batch-wait-timeout-s", "0.02"),
        ]
    )
    assert settings == ServeSettings(
        checkpoint=str(tmp_path / "x"),  # resolved: replicas run elsewhere
        model_name="m",
        max_batch_size=8,
        batch_wait_timeout_s=0.02,
        top_k=3,
        max_image_bytes=2048,
        max_image_pixels=100,
        device="cpu",
    )


def test_serve_defaults_come_from_the_settings_class() -> None:
    settings = _settings(["--checkpoint", "s3://bucket/ckpt"])
    assert settings == ServeSettings(checkpoint="s3://bucket/ckpt")  # a URI is kept as is


@pytest.mark.parametrize(
    ("local_cluster", "flags", "pinned"),
    [
        (True, [], True),  # replicas one per core of a machine started here: pinned
        (True, ["--no-pin-cpus"], False),
        (False, [], False),  # someone else's cluster: the class's default
        (False, ["--pin-cpus"], True),
    ],
)
def test_pin_cpus_defaults_on_only_for_a_cluster_started_here(
    local_cluster: bool, flags: list[str], pinned: bool
) -> None:
    settings = _settings(["--checkpoint", "s3://b/c", *flags], local_cluster=local_cluster)
    assert settings.pin_cpus is pinned


def test_bad_serve_setting_names_the_field() -> None:
    with pytest.raises(ConfigError, match="top_k must be positive"):
        _settings(["--checkpoint", "x", "--top-k", "0"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-k", "3"], "--checkpoint"),
        (["--checkpoint", "x", "--device", "tpu"], "--device"),
        (["--checkpoint", "x", "--max-image-bytes", "1e6"], "--max-image-bytes"),
        (["--checkpoint", "x", "--batch-wait-ms", "5"], "--batch-wait-ms"),
        (["--checkpoint", "x", "--replicas", "0"], "--replicas: must be positive"),
        (["--checkpoint", "x", "--replicas", "many"], "--replicas"),
    ],
)
def test_bad_serve_flags_are_argparse_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_works_without_python_sources(tmp_path: Path) -> None:
    package = tmp_path / "raysight"
    shutil.copytree(
        Path(raysight.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run([sys.executable, "-m", "compileall", "-b", "-q", str(package)], check=True)
    for source in package.rglob("*.py"):
        source.unlink()
    assert not list(package.rglob("*.py"))
    script = (
        "import raysight; print(raysight.__file__)\n"
        "from raysight.cli import main\n"
        "for command in ('serve', 'train'):\n"
        "    try:\n"
        "        main([command, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "10000"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    imported_from, _, help_text = result.stdout.partition("\n")
    assert Path(imported_from).parent == package  # the copy, not the editable install
    assert "--top-k" in help_text and "Labels returned by Classify" in help_text
    assert "--workers" in help_text and "Ray Train workers (DDP ranks)." in help_text


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "convnet" in out and "resnet18" in out


def test_train_checks_data_and_model_before_any_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from raysight import cluster

    def no_cluster(**_: object) -> None:
        raise AssertionError("a Ray cluster was started before the data was checked")

    monkeypatch.setattr(cluster, "connected", no_cluster)
    for name in ("cats", "dogs"):  # class folders where train/ and test/ should be
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "0.png")
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path)]
    assert cli.main([*argv, "--image-size", "32", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"move them into {tmp_path}/train/" in err
    # The convnet's unpadded convolutions cannot take the 8x8 digits.
    assert cli.main(["train", "--model-arg", "padding=valid"]) == 2
    assert "too small for convnet" in capsys.readouterr().err


def test_serve_refuses_a_checkpoint_that_is_not_the_pinned_one_before_any_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from raysight import cluster
    from raysight.checkpoint import manifest_sha256
    from tests.unit.test_checkpoint import _model, _save

    def no_cluster(**_: object) -> None:
        raise AssertionError("a Ray cluster was started before the checkpoint was checked")

    monkeypatch.setattr(cluster, "connected", no_cluster)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    checkpoint = _save(tmp_path / "ckpt", _model())
    wrong = "0" * 64
    argv = ["serve", "--checkpoint", str(checkpoint), "--checkpoint-sha256", wrong]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"sha256 is {manifest_sha256(checkpoint)}, not the pinned {wrong}" in err
    assert cli.main(["serve", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert cli.main(["serve", "--checkpoint", str(checkpoint), "--checkpoint-sha256", "ab"]) == 2
    assert "checkpoint_sha256 must be 64 hex digits" in capsys.readouterr().err


def test_a_local_cluster_runs_haproxy_through_the_launcher_with_tls_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_SERVE_HAPROXY_NBTHREAD", raising=False)
    from raysight.serve.tls import ServerTls

    args = cli._parser().parse_args(["serve", "--checkpoint", "/ckpt"])
    env = cli_serve.local_cluster_env(args, None)
    launcher = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert launcher.name == "raysight-haproxy" and os.access(launcher, os.X_OK)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAYSIGHT_HAPROXY_ADMIN_HOST"] == "127.0.0.1"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == str(max(1, (os.cpu_count() or 1) // 4))
    # Values left in the shell are overwritten, so they cannot turn TLS on.
    assert env["RAYSIGHT_TLS_CERT"] == env["RAYSIGHT_TLS_KEY"] == ""
    tls = ServerTls(cert=tmp_path / "c.pem", key=tmp_path / "k.pem", client_ca=tmp_path / "ca")
    env = cli_serve.local_cluster_env(args, tls)
    assert env["RAYSIGHT_TLS_CERT"] == str(tmp_path / "c.pem")
    assert env["RAYSIGHT_TLS_CLIENT_CA"] == str(tmp_path / "ca")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_NBTHREAD", "3")  # the operator's own choice stands
    assert cli_serve.local_cluster_env(args, None)["RAY_SERVE_HAPROXY_NBTHREAD"] == "3"


def test_tls_on_a_cluster_raysight_does_not_start_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    args = cli._parser().parse_args(
        ["serve", "--checkpoint", "/ckpt", "--tls-cert", "c", "--tls-key", "k"]
    )
    with pytest.raises(ConfigError, match="environment of `ray start`"):
        cli_serve._server_tls(args)


def test_predict_refuses_a_client_certificate_without_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any connection: the command names both flags."""
    image = tmp_path / "x.png"
    Image.new("L", (4, 4)).save(image)
    cert = tmp_path / "client.pem"
    cert.write_text("not read: refused first")
    assert cli.main(["predict", str(image), "--tls-cert", str(cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
