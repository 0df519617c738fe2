"""A local cluster's start-up against what earlier runs left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from raysight.checkpoint import verify_checkpoint
from raysight.cluster import TEMP_DIR_ENV, short_temp_dir
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _train_digits(tmp_path: Path, *flags: str) -> list[str]:
    """`raysight train` on the embedded digits, its outputs under `tmp_path`."""
    return [
        str(Path(sys.executable).parent / "raysight"),
        "train",
        "--config",
        "services/digits.yaml",
        "--output",
        str(tmp_path / "ckpt"),
        "--storage-path",
        str(tmp_path / "storage"),
        *flags,
    ]


def test_a_kept_temp_dir_naming_a_dead_cluster_still_starts_one(tmp_path: Path) -> None:
    base = short_temp_dir("rs-kept-")
    record = base / "ray" / "ray_current_cluster"
    try:
        # As a run killed with SIGKILL leaves it: its cluster named, and gone.
        record.parent.mkdir()
        record.write_text(f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env[TEMP_DIR_ENV] = str(base)
        train = subprocess.run(
            _train_digits(tmp_path, "--epochs", "1", "--workers", "1"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert train.returncode == 0, train.stderr[-3000:]
        assert verify_checkpoint(tmp_path / "ckpt").epoch == 1
        assert any(record.parent.glob("session_*"))  # the given dir was used, and is kept
        assert not record.exists()  # no record of a cluster that has stopped
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sigterm_stops_training_and_its_cluster_cleanly(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("raysight-*"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", TEMP_DIR_ENV)}
    train = subprocess.Popen(
        _train_digits(tmp_path, "--epochs", "200"),
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert train.stderr is not None
        for line in train.stderr:  # JSON lines: stderr is no terminal
            if '"epoch 2/200' in line:
                break
        else:
            raise AssertionError("training ended before its second epoch")
        train.send_signal(signal.SIGTERM)
        assert train.wait(timeout=120) == 130
    finally:
        train.kill()
    assert set(Path(tempfile.gettempdir()).glob("raysight-*")) <= before
    assert not (tmp_path / "ckpt").exists()  # no half-written final checkpoint
