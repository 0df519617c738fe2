"""`make run` as a new user meets it: a checkout at a long path, a terminal, Ctrl-C at the end.

Ray's unix sockets allow 107 bytes, so a cluster whose files lived under the checkout broke
at a path of 40-odd characters; and Ray's bookkeeping used to bury raysight's own lines.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from raysight.console import classify
from tests.conftest import REPO, free_port
from tests.integration.terminal import Terminal, screen

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 30  # services/digits.yaml


def _deep_checkout(tmp_path: Path) -> Path:
    """What `make run` reads of a checkout, at a path of over 100 characters. The venv is
    this checkout's (linked): building another would take minutes and test nothing new."""
    deep = tmp_path / "home-of-a-user" / "src" / "github.com" / "an-organisation" / "raysight"
    assert len(str(deep)) >= 100, deep
    deep.mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO / name, deep / name)
    shutil.copytree(REPO / "services", deep / "services")
    (deep / ".venv").symlink_to(REPO / ".venv")
    return deep


def _foreign(lines: list[str]) -> list[str]:
    """Lines on screen that are neither raysight's nor a warning or error: Ray's chatter."""
    foreign = []
    for line in lines:
        text = re.sub(r"^\(\w+ pid=\d+(?:, ip=[\d.]+)?\) ", "", line)
        kind = classify(text)
        prefixed = text != line  # Ray's "(Actor pid=N)": forwarded from one of its processes
        if kind.raysight and not prefixed:
            continue
        if (kind.level is not None and kind.level >= logging.WARNING) or (
            not prefixed and kind.level is None
        ):
            continue  # a warning or error; or the commands' own printed output
        foreign.append(line)
    return foreign


def test_make_run_from_a_deep_checkout_shows_raysights_lines(tmp_path: Path) -> None:
    deep = _deep_checkout(tmp_path)
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAYSIGHT_RAY_TMPDIR", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    serve_flags = f"--grpc-port {grpc_port} --http-port {free_port()} --metrics-port {metrics_port}"
    ray_dirs_before = set(Path(tempfile.gettempdir()).glob("raysight-*"))
    # -o: take the linked venv as built; its stamp predates the copied files.
    terminal = Terminal(
        ["make", "-o", ".venv/.installed", "run", f"SERVE_FLAGS={serve_flags}"], deep, env
    )
    try:
        terminal.wait_for("Ctrl-C stops", timeout=600)
        terminal.interrupt()
        # make, Ctrl-C'd with its command, waits for it and then ends itself by the signal.
        assert terminal.wait(timeout=120) == -signal.SIGINT, terminal.received[-3000:]
    finally:
        terminal.close()
    lines = [line for line in screen(terminal.received) if line.strip()]
    text = "\n".join(lines)
    assert (deep / "runs" / "digits" / "manifest.json").exists()
    assert len(re.findall(rf"INFO epoch \d+/{EPOCHS}  loss", text)) == EPOCHS, text[-4000:]
    assert re.search(r"^digits test: accuracy 0\.\d+", text, re.M), text[-4000:]
    assert len(re.findall(r"^\d\d-\d\.png: \d \([01]\.\d{3}\)", text, re.M)) == 5, text[-4000:]
    assert f"gRPC port {grpc_port}" in text
    assert _foreign(lines) == [], "\n".join(_foreign(lines))
    assert "Traceback" not in text
    # Ray's files went to a private temp dir, not the checkout, and left with the cluster.
    assert not list(deep.rglob("session_*"))
    assert set(Path(tempfile.gettempdir()).glob("raysight-*")) <= ray_dirs_before
