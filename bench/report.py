"""Markdown for the benchmark pages: machine facts, medians over rounds, tables, and the
section of docs/benchmarks.md a bench owns (between two marker comments)."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def command_line() -> str:
    """This bench's command line as a reader would type it: `python bench/NAME.py ...`."""
    return shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def machine_facts(repo: Path) -> dict[str, str]:
    """What the numbers depend on: CPU, memory, software versions, commit, date, load."""
    memory_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    memory = f"{int(memory_kib) / 2**20:.1f} GiB" if memory_kib.isdigit() else "?"
    commit = _git(repo, "rev-parse", "--short", "HEAD") or "?"
    # docs/ is where the benches write their pages and plots: a bench run after another
    # leaves them changed, which changes nothing that is measured.
    if _git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"):
        commit += " with uncommitted changes"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": f"{os.cpu_count()} x {_first('/proc/cpuinfo', 'model name')}",
        "CPUs usable": str(len(os.sched_getaffinity(0))),
        "memory": memory,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "torch": _version("torch"),
        "Ray": _version("ray"),
        "grpcio": _version("grpcio"),
        "raysight commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load average at start (1, 5, 15 min)": load,
    }


def facts_table(facts: Mapping[str, str]) -> str:
    return table(["", ""], [[f"**{k}**", v] for k, v in facts.items()])


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; cells are written as given."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Iterable[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def number(value: float, digits: int = 0) -> str:
    """1,234 or 1,234.5; a dash for a missing value."""
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def milliseconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base <= 0:
        return "-"
    return f"{value / base:.2f}x"


def begin_marker(name: str, writer: str) -> str:
    return f"<!-- {name}: begin (written by {writer}; edits here are overwritten) -->"


def end_marker(name: str) -> str:
    return f"<!-- {name}: end -->"


def write_section(path: Path, name: str, section: str, writer: str) -> None:
    """Put `section` between the markers named `name` in the Markdown file at `path`:
    replacing what the markers hold, else appended at the end; the rest of the page stays.
    A page that does not exist yet is created. `writer` names the script, for readers."""
    block = f"{begin_marker(name, writer)}\n\n{section.strip()}\n\n{end_marker(name)}\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmarks\n\n{block}")
        return
    text = path.read_text()
    begin, end = f"<!-- {name}: begin", end_marker(name)
    start = text.find(begin)
    stop = text.find(end, start)
    if start >= 0 and stop >= 0:
        text = text[:start] + block.rstrip("\n") + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
