"""Faults: the process writing a checkpoint is killed (SIGKILL) at a random moment.

Each round a child process replaces the same checkpoint over and over (ResNet-9 weights,
~26 MB a save, so a kill lands inside a save most of the time) and is killed at a random
moment. Whatever it left must be either a checkpoint that verifies and loads, or nothing:
never one that loads but is corrupt, never one that is refused; and the next save to the
same place must succeed.

    RAYSIGHT_KILL_ROUNDS=50 RAYSIGHT_RELIABILITY_OUT=kill.json \\
        .venv/bin/pytest tests/integration/test_checkpoint_kill.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from raysight.checkpoint import build_from_checkpoint, load_checkpoint
from raysight.errors import CheckpointError
from tests.conftest import REPO
from tests.integration.serving import untrained_checkpoint

pytestmark = [pytest.mark.slow]

ROUNDS = int(os.environ.get("RAYSIGHT_KILL_ROUNDS", "8"))
CHILD = """
import sys
from pathlib import Path
from tests.integration.serving import untrained_checkpoint
target = Path(sys.argv[1])
untrained_checkpoint(target, "resnet9", (3, 32, 32))
print("saved", flush=True)
while True:
    untrained_checkpoint(target, "resnet9", (3, 32, 32))
"""


def _outcome(target: Path) -> str:
    """What a reader finds at `target` after the kill."""
    if not target.exists():
        return "nothing"
    try:
        model = build_from_checkpoint(load_checkpoint(target))
    except CheckpointError:
        return "refused"
    assert sum(p.numel() for p in model.parameters()) > 0
    return "loaded"


def test_a_save_killed_at_any_moment_leaves_a_whole_checkpoint_or_none(tmp_path: Path) -> None:
    rng = random.Random(0)
    outcomes: Counter[str] = Counter()
    for round_ in range(ROUNDS):
        target = tmp_path / f"round{round_}" / "checkpoint"
        target.parent.mkdir()
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(target)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "saved"
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in a later save
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        outcomes[_outcome(target)] += 1
        # What the killed save left behind must not stop the next one.
        untrained_checkpoint(target, "resnet9", (3, 32, 32))
        assert _outcome(target) == "loaded"
    figures = {"rounds": ROUNDS, "outcomes": dict(outcomes)}
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        Path(out).write_text(json.dumps(figures, indent=2))
    assert set(outcomes) <= {"loaded", "nothing"}, figures
    assert outcomes["loaded"] >= 1, figures
