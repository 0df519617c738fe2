"""Typed configuration: one object per process, loaded from YAML and overridden by flags.

The resolved training config is written into every checkpoint's manifest, so a model can
always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from raysight.errors import ConfigError

Augment = Literal["auto", "none", "crop", "crop_flip", "photo", "book"]
ImageCache = Literal["auto", "memory", "stream"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["onecycle", "cosine", "constant"]
_T = TypeVar("_T")


def doc(
    text: str, *, flag: str | None = None, metavar: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Metadata of a config field: its help text and, rarely, how its flag is spelled.

    The help lives in data, not in a docstring under the field, so `--help` also works on an
    install that ships only .pyc files.

    Args:
        text: What the field means, one or two sentences; shown by `--help`.
        flag: The flag's name when `--field-name` reads badly (a mapping set one key at a
            time: `--model-arg KEY=VALUE`).
        metavar: Names of the values of a tuple field, e.g. ("H", "W").

    Returns:
        The `metadata` of `dataclasses.field`.
    """
    metadata: dict[str, Any] = {"help": text}
    if flag is not None:
        metadata["flag"] = flag
    if metavar is not None:
        metadata["metavar"] = metavar
    return metadata


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Field names match the `raysight train` flags."""

    # --- data ---
    dataset: str = field(
        default="digits",
        metadata=doc("Dataset reader: digits, mnist, fashion-mnist, cifar10 or imagefolder."),
    )
    data_dir: str | None = field(
        default=None,
        metadata=doc("Local directory or s3:// / gs:// URI; unused for the embedded digits."),
    )
    image_size: tuple[int, int] | None = field(
        default=None,
        metadata=doc(
            "(H, W) every image is resized to; imagefolder only (others have a fixed size).",
            metavar=("H", "W"),
        ),
    )
    channels: int = field(
        default=3,
        metadata=doc("1 (grey) or 3 (RGB) for imagefolder images; others carry their own."),
    )
    image_cache: ImageCache = field(
        default="auto",
        metadata=doc(
            "imagefolder: memory decodes every image once, in parallel, into Ray's object "
            "store and feeds every epoch from it; stream decodes in Ray Data tasks every "
            "epoch (folders larger than memory); auto: memory when the decoded images fit in "
            "a quarter of the object store."
        ),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=doc(
            "Share of the training split held out to pick the best checkpoint, unless an "
            "image folder has a validation/ (or val/) folder; the test split is only used "
            "once, for the final evaluation."
        ),
    )
    limit_train: int = field(
        default=0,
        metadata=doc(
            "Use only the first N images of the training split (quick runs, benchmarks); 0: all."
        ),
    )

    # --- model ---
    model: str = field(
        default="convnet", metadata=doc("A name from the model registry (`raysight models`).")
    )
    model_args: dict[str, Any] = field(
        default_factory=dict,
        metadata=doc(
            'Extra constructor arguments, e.g. {"width": 32} or {"padding": "same"}.',
            flag="--model-arg",
        ),
    )

    # --- starting point ---
    init_from: str | None = field(
        default=None,
        metadata=doc(
            "Start from the weights of this raysight checkpoint (a directory or s3:// / gs:// "
            "URI) of the same model and arguments: the classifier is re-initialised when the "
            "classes differ, and the parent's normalisation is kept."
        ),
    )
    freeze_backbone: bool = field(
        default=False,
        metadata=doc(
            "Train only the classifier of the init_from model (feature extraction); the rest "
            "keeps its weights and runs as at inference, BatchNorm statistics included."
        ),
    )

    # --- optimisation ---
    epochs: int = field(default=5, metadata=doc("Passes over the training split."))
    batch_size: int = field(
        default=128, metadata=doc("Global batch size, split evenly across workers.")
    )
    optimizer: Optimizer = field(
        default="adamw", metadata=doc("adamw, or sgd (Nesterov, with momentum).")
    )
    lr: float = field(default=3e-3, metadata=doc("Peak learning rate."))
    weight_decay: float = field(
        default=5e-4,
        metadata=doc("Weight decay of the weight matrices and kernels; none on biases and norms."),
    )
    momentum: float = field(default=0.9, metadata=doc("SGD momentum (Nesterov); ignored by AdamW."))
    schedule: Schedule = field(
        default="onecycle",
        metadata=doc(
            "onecycle: linear warm-up for warmup_fraction then cosine decay; cosine: decay "
            "only; constant: lr throughout."
        ),
    )
    warmup_fraction: float = field(
        default=0.15,
        metadata=doc("Share of the steps spent warming up from lr/25 to lr (onecycle only)."),
    )
    label_smoothing: float = field(
        default=0.0, metadata=doc("Cross-entropy label smoothing, in [0, 1).")
    )
    augment: Augment = field(
        default="auto",
        metadata=doc(
            "crop: random translation; crop_flip: plus left-right flips; photo: random "
            "resized crops (35-100% of the area), flips and light colour jitter; book: flips, "
            "rotations up to 36 degrees and zoom of +-20% (Deep Learning with Python's cats "
            "vs dogs); none. auto: crop for digits, crop_flip for photos (the best of these "
            "measured on a two-class photo folder)."
        ),
    )
    crop_padding: int = field(
        default=0,
        metadata=doc(
            "Pixels of random translation of crop and crop_flip; 0 picks H/8 for photos, H/14 "
            "for digits."
        ),
    )
    seed: int = field(
        default=0,
        metadata=doc(
            "Seed of the initial weights, the validation hold-out, shuffling and augmentation."
        ),
    )

    # --- cluster ---
    workers: int = field(default=2, metadata=doc("Ray Train workers (DDP ranks)."))
    gpu: bool = field(
        default=False,
        metadata=doc("One GPU per worker; enables bf16 autocast."),
    )
    cpus_per_worker: float = field(
        default=0.0,
        metadata=doc(
            "CPU cores reserved per worker (torch threads: its whole cores, at least 1); 0 "
            "shares the cluster's cores evenly, keeping a quarter for Ray Data when images "
            "stream."
        ),
    )
    max_failures: int = field(
        default=2,
        metadata=doc("Worker-group restarts allowed; each resumes from the latest checkpoint."),
    )

    # --- outputs ---
    output: str = field(
        default="runs/latest",
        metadata=doc(
            "Where the final (best) checkpoint is written: a local directory or an s3:// / "
            "gs:// URI (saved locally, then uploaded)."
        ),
    )
    storage_path: str | None = field(
        default=None,
        metadata=doc(
            "Ray Train's storage for per-epoch checkpoints; must be shared (s3://, NFS) on a "
            "multi-node cluster. Default: runs/ray under the current directory."
        ),
    )
    run_name: str | None = field(
        default=None,
        metadata=doc(
            "Name of the run in storage and in metrics labels; default model-dataset-time."
        ),
    )
    keep_checkpoints: int = field(
        default=2,
        metadata=doc("Per-epoch checkpoints kept in storage, best by validation accuracy."),
    )

    def __post_init__(self) -> None:
        _check_finite(self)
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
        if self.init_from == "":
            raise ConfigError("init_from is empty: name a checkpoint directory or URI, or drop it")
        if self.freeze_backbone and self.init_from is None:
            raise ConfigError(
                "freeze_backbone needs a trained backbone: pass --init-from CHECKPOINT (or set "
                "init_from: CHECKPOINT in the config), or drop --freeze-backbone"
            )
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
        return from_plain(cls, values, source)

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


def _check_finite(cfg: TrainConfig) -> None:
    # YAML reads .nan and .inf as floats, and a NaN passes every range check below (each
    # comparison with it is false); the manifest, which records the config, refuses them.
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")


def _check_positive(cfg: object, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")


def _check_non_negative(cfg: object, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def from_plain(cls: type[_T], values: dict[str, Any], source: str) -> _T:
    """Build a config dataclass from plain values, checking names and types against its hints.

    Lists become tuples and ints become floats where the field says so; nothing else is
    converted, so a string where a number is meant is an error rather than a guess.

    Args:
        cls: A dataclass whose fields are plain types, `X | None`, Literal, tuple or dict.
        values: Field name -> value, e.g. from YAML, JSON or flags; missing fields keep
            their defaults.
        source: Where the values came from, leading every error message.

    Returns:
        The instance, validated by its own `__post_init__` too.

    Raises:
        ConfigError: naming the unknown, missing or wrongly typed field.
    """
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
    missing = [f.name for f in fields if _required(f) and f.name not in values]
    if missing:
        raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
    kwargs = {
        name: _coerce(value, hints[name], f"{source}: {name}") for name, value in values.items()
    }
    return cls(**kwargs)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


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
