"""The machine facts a benchmark page records: the commit is flagged as changed only when
something other than docs/ (where the benches write) differs from it, in a real git repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("# Benchmarks\n")
    (tmp_path / "serve.py").write_text("RATE = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return tmp_path


def _commit_fact(repo: Path) -> str:
    return report.machine_facts(repo)["raysight commit"]


def test_clean_tree_names_the_commit_alone(repo: Path) -> None:
    fact = _commit_fact(repo)
    assert len(fact) >= 7 and " " not in fact


def test_a_rewritten_benchmark_page_is_not_a_code_change(repo: Path) -> None:
    (repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n\nnew numbers\n")
    assert not _commit_fact(repo).endswith("with uncommitted changes")


def test_a_changed_source_file_flags_the_commit(repo: Path) -> None:
    (repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n\nnew numbers\n")
    (repo / "serve.py").write_text("RATE = 2\n")
    assert _commit_fact(repo).endswith("with uncommitted changes")
