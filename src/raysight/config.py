"""Typed configuration: one object per process, loaded from YAML and overridden by flags.

The resolved training config is written into every checkpoint's manifest, so a model can
always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from raysight.errors import ConfigError

Augment = Literal["auto", "none", "crop", "crop_flip"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["onecycle", "cosine", "constant"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Field names match the `raysight train` flags."""

    # --- data ---
    dataset: str = "digits"
    """Dataset reader: digits, mnist, fashion-mnist, cifar10 or imagefolder."""
    data_dir: str | None = None
    """Local directory or s3:// / gs:// URI; unused for the embedded digits."""
    image_size: tuple[int, int] | None = None
    """(H, W) every image is resized to; imagefolder only (others have a fixed size)."""
    channels: int = 3
    """1 (grey) or 3 (RGB) for imagefolder images; others carry their own."""
    val_fraction: float = 0.1
    """Share of the training split held out to pick the best checkpoint; the test split is
    only used once, for the final evaluation."""
    limit_train: int = 0
    """Use only the first N images of the training split (quick runs, benchmarks); 0: all."""

    # --- model ---
    model: str = "convnet"
    """A name from the model registry (`raysight models`)."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra constructor arguments, e.g. {"width": 32} or {"padding": "same"}."""

    # --- optimisation ---
    epochs: int = 5
    batch_size: int = 128
    """Global batch size, split evenly across workers."""
    optimizer: Optimizer = "adamw"
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 5e-4
    momentum: float = 0.9
    """SGD momentum (Nesterov); ignored by AdamW."""
    schedule: Schedule = "onecycle"
    """onecycle: linear warm-up for warmup_fraction then cosine decay; cosine: decay only."""
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.0
    augment: Augment = "auto"
    """auto: random crop for every dataset, plus horizontal flips for natural images."""
    crop_padding: int = 0
    """Pixels of random translation; 0 picks H/8 for photos, H/14 for digits."""
    seed: int = 0

    # --- cluster ---
    workers: int = 2
    """Ray Train workers (DDP ranks)."""
    gpu: bool = False
    """One GPU per worker; enables bf16 autocast and channels_last."""
    cpus_per_worker: float = 0.0
    """CPU cores reserved per worker (torch threads: its whole cores, at least 1); 0 shares
    the cluster's cores evenly, keeping a quarter for Ray Data when images stream."""
    max_failures: int = 2
    """Worker-group restarts allowed; each resumes from the latest checkpoint."""

    # --- outputs ---
    output: str = "runs/latest"
    """Where the final (best) checkpoint is written."""
    storage_path: str | None = None
    """Ray Train's storage for per-epoch checkpoints; must be shared (s3://, NFS) on a
    multi-node cluster. Default: runs/ray under the current directory."""
    run_name: str | None = None
    """Name of the run in storage and in metrics labels; default model-dataset-time."""
    keep_checkpoints: int = 2
    """Per-epoch checkpoints kept in storage, best by validation accuracy."""

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "batch_size", "workers", "keep_checkpoints")
        _check_non_negative(self, "cpus_per_worker", "max_failures", "crop_padding", "limit_train")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.batch_size % self.workers:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be divisible by workers ({self.workers})"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a config from plain values (YAML, JSON, flags), checking names and types.

        Raises:
            ConfigError: naming the unknown field or the field with a wrong type.
        """
        return _from_dict(cls, values, source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Load a YAML file; `overrides` (command-line flags) win over the file."""
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        return cls.from_dict({**loaded, **(overrides or {})}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from a command line, the value read as YAML ("32" -> 32, "[2, 2]" -> a
    list, "same" -> "same"); dashes in KEY become underscores (field names).

    Raises:
        ConfigError: no "=" or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def _check_positive(cfg: object, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")


def _check_non_negative(cfg: object, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _from_dict(cls: type[_T], values: dict[str, Any], source: str) -> _T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
    kwargs = {
        name: _coerce(value, hints[name], f"{source}: {name}") for name, value in values.items()
    }
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting the few lossless cases (list -> tuple)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, hint, where)


def _coerce_union(value: Any, arms: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in arms:
        return None
    errors = []
    for arm in (a for a in arms if a is not type(None)):
        try:
            return _coerce(value, arm, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0])


def _coerce_scalar(value: Any, hint: type, where: str) -> Any:
    # bool is an int subclass: refuse it where a number is meant, and 1 where a bool is.
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
