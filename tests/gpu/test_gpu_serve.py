"""Serving on a GPU: the engine on CUDA gives the CPU's answers. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raysight.data import load_arrays
from raysight.engine import Engine
from tests.integration.serving import digits_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_engine_on_cuda_matches_cpu(tmp_path: Path) -> None:
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=1)
    images = load_arrays("digits", None, "test").images[:64]
    cpu = Engine.from_directory(checkpoint, "cpu")
    cuda = Engine.from_directory(checkpoint, "cuda")
    inputs = cpu.normalize(images)
    np.testing.assert_allclose(cuda.logits(inputs), cpu.logits(inputs), rtol=1e-3, atol=1e-3)
    assert (cuda.classify_pixels(images).argmax(1) == cpu.classify_pixels(images).argmax(1)).all()
