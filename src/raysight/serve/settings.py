"""Serving settings: one typed object per replica, from the Serve config's `user_config`.

Each field maps one to one to a key of `user_config` in services/serve.yaml, to a Helm
value, and to a `raysight serve` flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raysight.codec.image import ImageLimits
from raysight.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """What a replica serves and how it batches."""

    checkpoint: str
    """Checkpoint directory or s3:// / gs:// URI. Changing it swaps the model without downtime."""
    model_name: str = ""
    """Name clients use (OIP model_name); default: the checkpoint manifest's model and dataset."""
    max_batch_size: int = 32
    """Most images one forward pass takes; requests carrying more are refused."""
    batch_wait_timeout_s: float = 0.005
    """How long the first request of a batch waits for others to join it."""
    top_k: int = 5
    """Labels returned by Classify when the request does not say."""
    max_image_bytes: int = 10 * 1024 * 1024
    """Largest encoded image accepted by Classify."""
    max_image_pixels: int = 40_000_000
    """Largest width x height accepted, checked from the header before decoding."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when the replica was given a GPU)."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint is required")
        for name in ("max_batch_size", "top_k", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServeSettings:
        """Build from `user_config`, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"user_config: unknown key(s) {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
