"""The driver's data preparation: load or index a dataset, choose validation, measure
normalisation, and for image folders decode once or stream.

Runs before and just after the cluster connects; the workers only see what it resolves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysight.checkpoint import Manifest, Preprocessing
from raysight.config import TrainConfig
from raysight.data import ArrayDataset, class_frequencies, load_arrays
from raysight.data import imagefolder as imagefolder_data
from raysight.data.transforms import channel_stats
from raysight.errors import ConfigError, DataError
from raysight.train import decoded
from raysight.train.evaluation import labelled_split

logger = logging.getLogger(__name__)

# Images decoded on the driver to estimate an image folder's channel mean/std.
_STATS_SAMPLE = 512


@dataclass(frozen=True)
class PreparedData:
    """Data resolved on the driver: either in-memory splits (`arrays`) or the file indexes
    of an image folder (`indexes`), never both. `decode_once` turns indexes into arrays when
    they fit; otherwise Ray Data streams them once training starts."""

    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    # Fraction of the training rows in each class, counted from the labels of the split
    # actually trained on (after limit_train and the validation hold-out), for the manifest.
    class_frequencies: tuple[float, ...]
    preprocessing: Preprocessing
    arrays: dict[str, ArrayDataset] | None
    indexes: dict[str, imagefolder_data.ImageFolderIndex] | None
    rows: dict[str, int]
    final_split: str = "test"  # the split the best checkpoint is scored on at the end


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load or index the training data, hold out validation, and measure mean/std."""
    if cfg.dataset == "imagefolder":
        return _prepare_imagefolder(cfg, _data_dir(cfg))
    data_dir = None if cfg.dataset == "digits" else _data_dir(cfg)  # digits are built in
    train_split = load_arrays(cfg.dataset, data_dir, "train")
    if cfg.limit_train:
        train_split = train_split.subset(np.arange(min(cfg.limit_train, len(train_split))))
    train_set, val_set = _hold_out(train_split, cfg)
    if val_set is None:
        # No hold-out requested: validate on the test split, as the user asked.
        val_set = load_arrays(cfg.dataset, data_dir, "test")
    mean, std = channel_stats(train_set.images)
    return PreparedData(
        input_shape=train_set.image_shape,
        class_names=train_set.class_names,
        class_frequencies=class_frequencies(train_set.labels, len(train_set.class_names)),
        preprocessing=Preprocessing(mean=mean, std=std),
        arrays={"train": train_set, "val": val_set},
        indexes=None,
        rows={"train": len(train_set), "val": len(val_set)},
    )


def _hold_out(split: ArrayDataset, cfg: TrainConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Seeded random hold-out of `cfg.val_fraction` of the training split."""
    if cfg.val_fraction == 0:
        return split, None
    order = np.random.default_rng(cfg.seed).permutation(len(split))
    n_val = max(1, round(len(split) * cfg.val_fraction))
    return split.subset(np.sort(order[n_val:])), split.subset(np.sort(order[:n_val]))


def _data_dir(cfg: TrainConfig) -> str:
    """`cfg.data_dir`, which every dataset but the built-in digits needs."""
    if cfg.data_dir is not None:
        return cfg.data_dir
    holding = " holding train/<class>/*.jpg and test/<class>/*.jpg"
    raise ConfigError(
        f"{cfg.dataset} needs a data directory: pass --data-dir DIR or set data_dir: DIR in "
        f"the config (a folder or s3:// URI{holding if cfg.dataset == 'imagefolder' else ''})"
    )


def _image_size(cfg: TrainConfig, first_image: str) -> tuple[int, int]:
    """`cfg.image_size`, required for image folders, whose images come in any size."""
    if cfg.image_size is not None:
        return cfg.image_size
    message = (
        "imagefolder needs an image size: pass --image-size H W (e.g. --image-size 128 128) "
        "or set image_size: [128, 128] in the config"
    )
    with contextlib.suppress(DataError):  # the hint is a courtesy; the error stands without it
        height, width = imagefolder_data.image_size_of(first_image)
        message += f"; the first image, {first_image}, is {height}x{width} (H x W)"
    raise ConfigError(message)


def _prepare_imagefolder(cfg: TrainConfig, data_dir: str) -> PreparedData:
    layout = imagefolder_data.find_layout(data_dir)
    index = imagefolder_data.scan(data_dir, layout.train)
    # Listed now, although only validation and the final evaluation read them: a split
    # with other classes should stop the run before training, not after.
    others = {
        name: imagefolder_data.scan(data_dir, name)
        for name in (layout.validation, layout.test)
        if name is not None
    }
    for name, other in others.items():
        if other.class_names != index.class_names:
            raise DataError(
                f"{data_dir}: {name} classes {list(other.class_names)} differ from train "
                f"classes {list(index.class_names)}; give each class a folder in both"
            )
    image_size = _image_size(cfg, index.paths[0])
    if cfg.limit_train:
        index = _index_subset(index, np.arange(min(cfg.limit_train, len(index.paths))))
    train_index, val_index = _validation_of(index, layout, others, cfg)
    logger.info(
        "%s: %s; the best checkpoint is picked on %s and scored on %s/",
        data_dir,
        layout.describe(),
        f"{layout.validation}/" if layout.validation else f"{len(val_index.paths)} held-out images",
        layout.final,
    )
    sample = imagefolder_data.load_arrays(
        _index_subset(train_index, np.arange(min(_STATS_SAMPLE, len(train_index.paths)))),
        image_size,
        cfg.channels,
    )
    mean, std = channel_stats(sample.images)
    return PreparedData(
        input_shape=(cfg.channels, *image_size),
        class_names=index.class_names,
        # From the index's labels: the same rows Ray Data streams, none of them decoded.
        class_frequencies=class_frequencies(train_index.labels, len(index.class_names)),
        preprocessing=Preprocessing(mean=mean, std=std),
        arrays=None,
        indexes={"train": train_index, "val": val_index},
        rows={"train": len(train_index.paths), "val": len(val_index.paths)},
        final_split=layout.final,
    )


def _validation_of(
    index: imagefolder_data.ImageFolderIndex,
    layout: imagefolder_data.FolderLayout,
    others: dict[str, imagefolder_data.ImageFolderIndex],
    cfg: TrainConfig,
) -> tuple[imagefolder_data.ImageFolderIndex, imagefolder_data.ImageFolderIndex]:
    """(training rows, validation rows): the validation folder when there is one, else a
    seeded hold-out of `cfg.val_fraction` of the training folder (or, with none held out,
    the test folder, as the user asked)."""
    if layout.validation is not None:
        return index, others[layout.validation]
    order = np.random.default_rng(cfg.seed).permutation(len(index.paths))
    n_val = max(1, round(len(order) * cfg.val_fraction)) if cfg.val_fraction else 0
    if not n_val:
        assert layout.test is not None  # find_layout accepts no layout without either
        return _index_subset(index, order), others[layout.test]
    return _index_subset(index, order[n_val:]), _index_subset(index, order[:n_val])


def ray_datasets(data: PreparedData, seed: int) -> dict[str, Any] | None:
    """An image folder's splits as lazily decoded Ray Data streams (needs a cluster); the
    training split reshuffled every epoch."""
    if data.indexes is None:
        return None
    channels, height, width = data.input_shape
    return {
        split: imagefolder_data.to_ray_dataset(
            index, (height, width), channels, shuffle_seed=seed if split == "train" else None
        )
        for split, index in data.indexes.items()
    }


def decode_once(cfg: TrainConfig, data: PreparedData) -> PreparedData:
    """An image folder's splits decoded into memory when `cfg.image_cache` allows and they
    fit (needs a cluster); otherwise `data` unchanged, to stream."""
    if data.indexes is None or cfg.image_cache == "stream":
        return data
    rows = sum(len(index.paths) for index in data.indexes.values())
    total = decoded.decoded_bytes(rows, data.input_shape)
    if cfg.image_cache == "auto" and not decoded.fits_in_memory(total):
        logger.info(
            "%d decoded images (%.0f MB) exceed the object store's share: streaming them "
            "with Ray Data every epoch",
            rows,
            total / 1e6,
        )
        return data
    arrays = {
        split: decoded.decode_index(
            index, data.input_shape, cfg.dataset, "training" if split == "train" else "validation"
        )
        for split, index in data.indexes.items()
    }
    return dataclasses.replace(data, arrays=arrays, indexes=None)


def final_split(
    cfg: TrainConfig, data: PreparedData, manifest: Manifest
) -> ArrayDataset | imagefolder_data.ImageFolderIndex:
    """The split the best checkpoint is scored on at the end: in memory when the folder was
    decoded once (the validation folder is already), else as `raysight evaluate` reads it.

    Raises:
        DataError: Its classes are not the checkpoint's, or a file cannot be decoded.
    """
    split = labelled_split(cfg.dataset, cfg.data_dir, data.final_split, manifest)
    if data.arrays is None or not isinstance(split, imagefolder_data.ImageFolderIndex):
        return split
    if data.final_split != "test":
        return data.arrays["val"]
    return decoded.decode_index(split, data.input_shape, cfg.dataset, "test")


def _index_subset(
    index: imagefolder_data.ImageFolderIndex, rows: np.ndarray
) -> imagefolder_data.ImageFolderIndex:
    return dataclasses.replace(
        index,
        paths=tuple(index.paths[i] for i in rows),
        labels=tuple(index.labels[i] for i in rows),
    )
