"""The commands a person runs: `raysight train` / `evaluate` and `ray job submit`, as processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray._private import utils as ray_utils

from raysight.checkpoint import verify_checkpoint
from raysight.data import load_arrays
from raysight.serve.runner import AUTO_REPLICAS_MAX
from tests.conftest import REPO, RayCluster, free_port
from tests.integration.serving import digits_checkpoint, png, serve_argv, wait_serving
from tests.integration.terminal import run_on_terminal, screen

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _run(argv: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _env(cluster: RayCluster) -> dict[str, str]:
    # RAY_ADDRESS makes the command join the test cluster instead of starting its own.
    return {**os.environ, "RAY_ADDRESS": cluster.gcs_address, "RAY_AUTH_MODE": "token"}


def _train_digits(tmp_path: Path, *flags: str) -> list[str]:
    """`train` on the embedded digits with one worker, its outputs under `tmp_path`."""
    return [
        "train",
        "--config",
        "services/digits.yaml",
        "--workers",
        "1",
        "--output",
        str(tmp_path / "ckpt"),
        "--storage-path",
        str(tmp_path / "storage"),
        *flags,
    ]


def test_train_then_evaluate_commands(ray_cluster: RayCluster, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    train = _run(
        [
            str(BIN / "raysight"),
            "train",
            "--config",
            "services/digits.yaml",
            "--epochs",
            "3",
            "--output",
            str(out),
            "--storage-path",
            str(tmp_path / "storage"),
        ],
        _env(ray_cluster),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"checkpoint: {out}" in train.stdout
    manifest = verify_checkpoint(out)
    assert manifest.epoch >= 1
    assert manifest.train_config["epochs"] == 3  # the flag overrode the file's 30

    # Scored in shards on the session's cluster, then in this one process: the same figure.
    evaluate = _run(
        [str(BIN / "raysight"), "evaluate", "--checkpoint", str(out), "--json"], _env(ray_cluster)
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads(evaluate.stdout)
    assert result["samples"] == 359
    assert result["accuracy"] == pytest.approx(manifest.metrics["test_accuracy"], abs=1e-9)
    assert sum(map(sum, result["confusion"])) == 359

    table = _run(
        [str(BIN / "raysight"), "evaluate", "--checkpoint", str(out), "--workers", "0"],
        dict(os.environ),
    )
    assert table.returncode == 0
    assert "true \\ predicted" in table.stdout
    assert f"accuracy {manifest.metrics['test_accuracy']:.4f}" in table.stdout


def test_train_draws_a_progress_bar_on_a_terminal(ray_cluster: RayCluster, tmp_path: Path) -> None:
    code, received = run_on_terminal(
        [str(BIN / "raysight"), *_train_digits(tmp_path, "--epochs", "6")],
        REPO,
        _env(ray_cluster),
    )
    assert code == 0, received[-3000:]
    frames = re.findall(
        r"epoch (\d)/6 [█░]{10,40}  (\d+)/(\d+)  [\d,]+ samples/s  [\dhms ]+ left", received
    )
    assert frames, received[-3000:]
    assert all(int(step) <= int(steps) for _, step, steps in frames)
    assert ("6", frames[-1][2], frames[-1][2]) in frames  # the last epoch seen to its end
    lines = screen(received)
    # Worker lines reach the terminal as text, one to a line; no frame is left on screen,
    # neither glued to a log line nor after the run.
    assert any(re.search(r"INFO epoch 6/6  loss", line) for line in lines), lines[-20:]
    assert not any("█" in line or "░" in line for line in lines), lines[-20:]
    assert lines[-2].startswith("epoch ") and "test accuracy" in lines[-2]


def test_quiet_train_shows_results_only(ray_cluster: RayCluster, tmp_path: Path) -> None:
    code, received = run_on_terminal(
        [str(BIN / "raysight"), "-q", *_train_digits(tmp_path, "--epochs", "2")],
        REPO,
        _env(ray_cluster),
    )
    assert code == 0, received[-3000:]
    assert "█" not in received and "░" not in received  # no bar, not even for a moment
    lines = [line for line in screen(received) if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["checkpoint", "epoch 2"], lines


def test_bad_input_fails_cleanly_without_a_traceback(tmp_path: Path) -> None:
    missing = _run(
        [str(BIN / "raysight"), "train", "--dataset", "mnist", "--data-dir", str(tmp_path)],
        dict(os.environ),
    )
    assert missing.returncode == 2
    assert "error:" in missing.stderr
    assert "train-images-idx3-ubyte" in missing.stderr
    assert "Traceback" not in missing.stderr

    (tmp_path / "broken").mkdir()
    evaluate = _run(
        [str(BIN / "raysight"), "evaluate", "--checkpoint", str(tmp_path / "broken")],
        dict(os.environ),
    )
    assert evaluate.returncode == 2
    assert "manifest" in evaluate.stderr
    assert "Traceback" not in evaluate.stderr


def test_ray_job_submit_runs_the_training_entrypoint(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    out = tmp_path / "job-ckpt"
    submit = _run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_cluster.dashboard_url,
            "--working-dir",
            ".",
            "--",
            # The cluster's interpreter: on a real cluster image that is plain `python`.
            sys.executable,
            "services/train_job.py",
            "--config",
            "services/digits.yaml",
            "epochs=2",
            f"output={out}",
            f"storage_path={tmp_path / 'storage'}",
            "workers=1",
        ],
        {**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert "succeeded" in submit.stdout.lower()
    # The entrypoint's last log line carries the result (JSON inside the JSON log line).
    result_lines = [line for line in submit.stdout.splitlines() if "test_accuracy" in line]
    assert result_lines, submit.stdout[-3000:]
    assert verify_checkpoint(out).train_config["workers"] == 1


def test_serve_and_predict_commands_then_ctrl_c(tmp_path: Path) -> None:
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=2)
    image = tmp_path / "digit.png"
    image.write_bytes(png(load_arrays("digits", None, "test").images[0][0]))
    grpc_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    server = subprocess.Popen(
        serve_argv(checkpoint, grpc_port, metrics_port, free_port()),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # Ctrl-C below goes to its whole group, as a terminal's does
    )
    head: list[str] = []
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", server)
        # Health answers once one replica runs; the command is serving (and Ctrl-C stops it
        # rather than interrupting the deploy) once every replica runs and it says so.
        assert server.stdout is not None
        while not head or not head[-1].startswith("Ctrl-C stops"):
            line = server.stdout.readline()
            assert line, "".join(head)
            head.append(line)
        predict = _run(
            [str(BIN / "raysight"), "predict", str(image), "--target", f"127.0.0.1:{grpc_port}"],
            dict(os.environ),
        )
        assert predict.returncode == 0, predict.stderr
        assert predict.stdout.startswith(f"{image}: ")
        refused = _run(
            [
                str(BIN / "raysight"),
                "predict",
                str(REPO / "README.md"),
                "--target",
                f"127.0.0.1:{grpc_port}",
            ],
            dict(os.environ),
        )
        assert refused.returncode == 1
        assert "INVALID_ARGUMENT" in refused.stderr
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            rest, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert server.returncode == 0
    out = "".join(head) + rest
    assert f"gRPC port {grpc_port}" in out
    # --replicas auto: one replica per core of the cluster it started, as Ray counts them.
    replicas = max(1, min(AUTO_REPLICAS_MAX, ray_utils.get_num_cpus()))
    assert f"{replicas} replica{'s' if replicas > 1 else ''})" in out


def test_ctrl_c_while_serve_is_deploying_stops_at_once(tmp_path: Path) -> None:
    # The terminal's Ctrl-C reaches Ray's processes too; the command then must not wait on a
    # deploy request that the stopped cluster will never answer.
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=1)
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("w") as err:
        server = subprocess.Popen(
            serve_argv(checkpoint, free_port(), free_port(), free_port()),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while "started a local Ray cluster" not in log.read_text():
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert "is running" not in log.read_text()  # still deploying
            os.killpg(server.pid, signal.SIGINT)
            returncode = server.wait(timeout=60)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
    assert returncode == 130
    assert "Traceback" not in log.read_text()
