"""Generate the Python protobuf and gRPC code of protos/ into src/raysight/_proto/.

    python scripts/gen_proto.py                  # regenerate the committed package (make proto)
    python scripts/gen_proto.py --check [DIR]    # exit 1 if DIR differs from a fresh generation

protoc writes modules named after the proto packages (`inference.model_config_pb2`); this
script moves them under `raysight._proto` and rewrites their imports to match. It also
registers every file in raysight's own descriptor pool (`raysight._proto.POOL`) instead of
protobuf's default one: tritonclient, kserve and MLServer register their own copies of the
`inference` package in the default pool, and a second definition of a symbol there fails at
import time, so the two could not share a process.

The output is a pure function of the .proto files and the grpcio-tools version: the same
inputs give byte-identical files, which is what the drift test relies on.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"
OUT_DIR = REPO / "src" / "raysight" / "_proto"
PACKAGE = "raysight._proto"

_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# The two lines of protoc's *_pb2.py output that put a file in the default pool.
_POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
_POOL_USE = "_descriptor_pool.Default().AddSerializedFile("
_ROOT_INIT = '''"""Generated protobuf and gRPC code: made by scripts/gen_proto.py (make proto).

Do not edit: change protos/ and regenerate. Every message here lives in `POOL`, not in
protobuf's default descriptor pool, so these modules load next to other copies of the
`inference` protos (tritonclient, kserve). Pass `POOL` to anything that finds messages by
name, such as gRPC server reflection.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''
_PACKAGE_INIT = '"""Generated code: made by scripts/gen_proto.py (make proto); do not edit."""\n'
# `from inference import model_config_pb2 as ...`: module path, then the imported name.
_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)", re.MULTILINE)


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto file under `root`, sorted so the order never depends on the file system."""
    return sorted(root.rglob("*.proto"))


def _run_protoc(files: list[Path], out: Path) -> None:
    # grpc_tools ships the well-known types (google/protobuf/*.proto); include them so a
    # proto may import one without extra setup.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def _module_name(path: Path, root: Path) -> str:
    # out/inference/model_config_pb2.py -> "inference.model_config_pb2"
    return ".".join(path.relative_to(root).with_suffix("").parts)


def _rewrite_imports(text: str, modules: frozenset[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        package, name = match.group(1), match.group(2)
        if f"{package}.{name}" not in modules:
            return match.group(0)  # protobuf, grpc and other third-party imports stay
        return f"from {PACKAGE}.{package} import {name}"

    return _IMPORT.sub(repl, text)


def _fix_pb2_module(text: str, path: Path, module: str) -> str:
    # Put the file in POOL, and name the message classes' module after where it really lives
    # (pickle, which Ray uses between processes, finds a class through its __module__).
    build = f"_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, '{module}', _globals)"
    if any(text.count(line) != 1 for line in (_POOL_IMPORT, _POOL_USE, build)):
        raise SystemExit(f"{path.name}: unexpected protoc output; update {Path(__file__).name}")
    text = text.replace(_POOL_IMPORT, f"from {PACKAGE} import POOL as _POOL\n")
    text = text.replace(_POOL_USE, "_POOL.AddSerializedFile(")
    return text.replace(build, build.replace(f"'{module}'", f"'{PACKAGE}.{module}'"))


def _write_inits(out: Path) -> None:
    (out / "__init__.py").write_text(_ROOT_INIT)
    for folder in sorted(p for p in out.rglob("*") if p.is_dir()):
        (folder / "__init__.py").write_text(_PACKAGE_INIT)


def generate(out: Path) -> list[Path]:
    """Generate the complete `raysight._proto` package into an empty or missing folder.

    Args:
        out: The folder that becomes the package; it must not hold files yet.

    Returns:
        The files written, relative to `out`, sorted.
    """
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"{out}: not empty")
    _run_protoc(proto_files(), out)
    generated = sorted(p for p in out.rglob("*") if p.name.endswith(_GENERATED_SUFFIXES))
    modules = frozenset(_module_name(p, out) for p in generated if p.suffix == ".py")
    for path in generated:
        text = _rewrite_imports(path.read_text(), modules)
        if path.name.endswith("_pb2.py"):
            text = _fix_pb2_module(text, path, _module_name(path, out))
        path.write_text(text)
    _write_inits(out)
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


def _tree(root: Path) -> set[Path]:
    # Files of a package, minus the bytecode Python leaves beside them.
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def drift(committed: Path) -> list[str]:
    """Compare a committed package with a fresh generation.

    Args:
        committed: The package folder to check, normally src/raysight/_proto.

    Returns:
        One line per file that differs, is missing or should not be there; empty when in sync.
    """
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_proto"
        expected = set(generate(fresh))
        actual = _tree(committed) if committed.is_dir() else set()
        lines = [f"{committed / p}: missing" for p in sorted(expected - actual)]
        lines += [f"{committed / p}: not generated" for p in sorted(actual - expected)]
        lines += [
            f"{committed / p}: differs"
            for p in sorted(expected & actual)
            if not filecmp.cmp(fresh / p, committed / p, shallow=False)
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Regenerate the committed package, or check it for drift with --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        nargs="?",
        const=OUT_DIR,
        type=Path,
        metavar="DIR",
        help="compare DIR (default: the committed package) with a fresh generation",
    )
    args = parser.parse_args(argv)
    if args.check is not None:
        lines = drift(args.check)
        for line in lines:
            sys.stderr.write(f"{line}\n")
        if lines:
            sys.stderr.write("generated code is out of date with protos/: run `make proto`\n")
        return 1 if lines else 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_proto"
        written = generate(fresh)
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUT_DIR)
    sys.stdout.write(f"wrote {len(written)} files to {OUT_DIR.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
