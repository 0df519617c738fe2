"""Virtualenvs of the bench's own under its work directory, one per tool it installs
(a peer server, the plotting library), each from bench/requirements-NAME.txt and never
from the project's dependencies.

A peer's virtualenv also gets what raysight's engine imports, pinned to the versions in
the project's constraints.txt; raysight itself comes from the source tree on PYTHONPATH.
A virtualenv is remade when its requirements or those pins change.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# What raysight's engine imports, installed at the project's pinned versions.
ENGINE_PACKAGES = ("torch", "numpy", "safetensors", "pyarrow", "pillow")
INSTALL_TIMEOUT_S = 1800.0


class InstallError(RuntimeError):
    """A virtualenv could not be made; the message says which step failed and why."""


@dataclass(frozen=True)
class Venv:
    """A virtualenv of the bench's own, from bench/requirements-NAME.txt."""

    name: str
    root: Path

    @property
    def requirements(self) -> Path:
        return BENCH / f"requirements-{self.name}.txt"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"


def venv(work_dir: Path, name: str) -> Venv:
    """The virtualenv `name` of the bench whose work directory is `work_dir`."""
    return Venv(name, work_dir / "venvs" / name)


def engine_constraints(repo: Path) -> str:
    """The project's pins of the engine's packages, as a constraints file's text."""
    pins = [
        line
        for line in (repo / "constraints.txt").read_text().splitlines()
        if line.split("==")[0].strip().lower() in ENGINE_PACKAGES
    ]
    return "\n".join(pins) + "\n"


def install_commands(env: Venv, constraints: Path, *, engine: bool) -> list[list[str]]:
    """The commands that make `env`: the same Python as the bench's, then one pip call
    (with the engine's packages when `engine`)."""
    return [
        [sys._base_executable, "-m", "venv", str(env.root)],  # not the project's venv
        [str(env.python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [
            str(env.python),
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            str(env.requirements),
            "-c",
            str(constraints),
            *(ENGINE_PACKAGES if engine else ()),
        ],
    ]


def ensure(work_dir: Path, repo: Path, name: str, *, engine: bool = True) -> Venv:
    """The virtualenv `name` under `work_dir`, made (or remade, when its requirements
    changed) if needed; with raysight's engine's packages when `engine`, at the versions
    `repo`'s constraints.txt pins.

    Raises:
        InstallError: naming the step that failed, with the end of pip's output.
    """
    env = venv(work_dir, name)
    constraints = env.root.parent / f"{name}-engine-constraints.txt"
    text = engine_constraints(repo)
    wanted = hashlib.sha256((env.requirements.read_text() + text).encode()).hexdigest()
    stamp = env.root / ".bench-installed"
    if stamp.exists() and stamp.read_text() == wanted and env.python.exists():
        return env
    env.root.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(text)
    log = work_dir / "logs" / f"install-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing {name} into {env.root} (log {log})", flush=True)
    with log.open("w") as out:
        for argv in install_commands(env, constraints, engine=engine):
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise InstallError(f"{shlex.join(argv[:4])} ...: timed out") from None
            if done.returncode != 0:
                out.flush()
                raise InstallError(
                    f"{shlex.join(argv[:4])} ... exited {done.returncode}: {_tail(log)}"
                )
    stamp.write_text(wanted)
    return env


def version(env: Venv, package: str) -> str:
    """The installed version of `package` in `env`, or "?"."""
    done = subprocess.run(
        [str(env.python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def _tail(log: Path) -> str:
    """pip's last error line (or its last line), and where the rest is."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    last = (errors or lines or ["no output"])[-1]
    return f"{last[:300]} (log {log})"
