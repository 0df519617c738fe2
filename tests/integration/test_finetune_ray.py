"""Fine-tuning end to end on a real local cluster: a parent trained, then its classifier
retrained on a frozen backbone by two DDP ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raysight.checkpoint import (
    ParentCheckpoint,
    load_checkpoint,
    manifest_sha256,
    verify_checkpoint,
)
from raysight.config import TrainConfig
from raysight.train.trainer import train
from tests.conftest import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_frozen_backbone_fine_tuned_keeps_the_parents_features(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    parent_cfg = TrainConfig(
        dataset="digits",
        model="convnet",
        model_args={"padding": "same"},
        epochs=2,
        batch_size=32,
        workers=1,
        max_failures=0,
        output=str(tmp_path / "parent"),
        storage_path=str(tmp_path / "storage"),
        run_name="parent",
    )
    parent = train(parent_cfg)
    # Two ranks: DDP must accept a model whose backbone has no gradients.
    child = train(
        parent_cfg.replace(
            epochs=1,
            workers=2,
            init_from=parent.checkpoint,
            freeze_backbone=True,
            output=str(tmp_path / "child"),
            run_name="child",
        )
    )

    manifest = verify_checkpoint(child.checkpoint)
    assert manifest.parent == ParentCheckpoint(
        sha256=manifest_sha256(parent.checkpoint), source=parent.checkpoint, dataset="digits"
    )
    assert manifest.preprocessing == parent.manifest.preprocessing
    before = load_checkpoint(parent.checkpoint).state_dict
    after = load_checkpoint(child.checkpoint).state_dict
    backbone = [name for name in before if not name.startswith("head.")]
    assert backbone and all(torch.equal(after[name], before[name]) for name in backbone)
    assert not torch.equal(after["head.weight"], before["head.weight"])  # the classifier learnt
