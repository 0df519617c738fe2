"""What the peer servers run per request: raysight's engine on the checkpoint.

Imported inside a peer's own virtualenv (torch, numpy and safetensors only; raysight comes
from the source tree on PYTHONPATH, Ray is not installed there), so it uses the engine and
not the Serve deployment's model wrapper.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from raysight.allocator import retain_freed_memory
from raysight.engine import Engine

THREADS_ENV = "RAYSIGHT_BENCH_TORCH_THREADS"
"""Torch threads of the peer's model (1 unless the bench says otherwise)."""


def load(checkpoint: str) -> Engine:
    """The checkpoint on the CPU, with the bench's thread count and the replica's malloc
    settings, so that the allocator is not what differs between the servers."""
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
    retain_freed_memory()
    return Engine.from_directory(checkpoint)


def run(engine: Engine, images: np.ndarray) -> dict[str, np.ndarray]:
    """What raysight's replica computes for one request: FP32 is taken as normalised,
    UINT8 as raw pixels; (B, K) FP32 logits and probabilities."""
    if images.dtype == np.uint8:
        logits = engine.classify_pixels(images)
    else:
        logits = engine.logits(images.astype(np.float32, copy=False))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return {
        "logits": logits,
        "probabilities": (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32),
    }
