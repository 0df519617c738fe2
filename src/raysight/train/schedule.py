"""Learning-rate schedules as pure functions of the step, so resuming needs only the step."""

from __future__ import annotations

import math

from raysight.config import Schedule


def lr_at(step: int, total_steps: int, peak: float, schedule: Schedule, warmup: float) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`.

    onecycle: linear warm-up from peak/25 over the first `warmup` share of the steps, then
    cosine decay to ~0; cosine: decay only; constant: `peak` throughout. A step past the end
    (a data shard one batch longer than planned) keeps the final value rather than failing.
    """
    if schedule == "constant" or total_steps <= 1:
        return peak
    progress = min(step, total_steps - 1) / (total_steps - 1)
    if schedule == "onecycle" and progress < warmup:
        start = peak / 25.0
        return start + (peak - start) * progress / warmup
    decay_start = warmup if schedule == "onecycle" else 0.0
    decay = (progress - decay_start) / (1.0 - decay_start)
    return peak * 0.5 * (1.0 + math.cos(math.pi * decay))
