"""What a serving replica imports: the model and its preprocessing, no dataset readers."""

from __future__ import annotations

import subprocess
import sys

READERS = (
    "raysight.data.cifar",
    "raysight.data.digits",
    "raysight.data.idx",
    "raysight.data.imagefolder",
)


def _imported_by(module: str) -> set[str]:
    """The raysight modules a fresh interpreter has loaded after importing `module`."""
    code = (
        f"import sys, {module}; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('raysight')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_the_serving_deployment_imports_no_dataset_reader() -> None:
    loaded = _imported_by("raysight.serve.app")
    assert "raysight.storage" in loaded  # checkpoints on object stores, through storage
    assert loaded.isdisjoint(READERS), sorted(loaded & set(READERS))
