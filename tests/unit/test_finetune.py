"""Fine-tuning: the driver's checks of the parent, the weight transfer and the frozen backbone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from raysight.checkpoint import (
    Manifest,
    ParentCheckpoint,
    Preprocessing,
    manifest_sha256,
    save_checkpoint,
)
from raysight.config import TrainConfig
from raysight.errors import ConfigError
from raysight.models import build_model, model_names, resolve_kwargs
from raysight.train import finetune, trainer
from raysight.train.finetune import (
    FrozenBackbone,
    ParentWeights,
    check_parent,
    classifier_name,
    freeze_backbone,
    share_parent,
    start_from_parent,
    transfer_weights,
)
from raysight.train.step import Preparation, Stepper, build_optimizer

DIGITS = tuple(str(d) for d in range(10))
# convnet on the 8x8 digits, small enough to build in milliseconds.
CONVNET: dict[str, Any] = {"padding": "same", "width": 8, "hidden": 16}
# A resnet with BatchNorm in its backbone: one stage of one block.
RESNET: dict[str, Any] = {"layers": [1], "width": 4}
PARENT_NORM = Preprocessing(mean=(0.3,), std=(0.2,))


def _kwargs(model: str, classes: int, size: int = 8, **args: Any) -> dict[str, Any]:
    return resolve_kwargs(
        model, in_channels=1, num_classes=classes, image_size=(size, size), **args
    )


def _trained(model: str, kwargs: dict[str, Any], seed: int = 1) -> nn.Module:
    """A model whose weights and BatchNorm statistics differ from a fresh one's."""
    torch.manual_seed(seed)
    net = build_model(model, **kwargs)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter))
        net.train()
        net(torch.randn(16, kwargs["in_channels"], *kwargs["image_size"]))  # moves BN stats
    return net.eval()


def _save_parent(
    directory: Path, model: str, kwargs: dict[str, Any], classes: tuple[str, ...] = DIGITS
) -> tuple[Path, nn.Module]:
    net = _trained(model, kwargs)
    manifest = Manifest.new(
        model=model,
        model_kwargs=kwargs,
        input_shape=(kwargs["in_channels"], *kwargs["image_size"]),
        preprocessing=PARENT_NORM,
        class_names=classes,
        dataset="digits",
        metrics={"val_accuracy": 0.9},
        train_config={},
        epoch=2,
    )
    return save_checkpoint(directory, state_dict=net.state_dict(), manifest=manifest), net


def _equal_except(a: nn.Module, b: nn.Module, skip: str = "") -> bool:
    """Whether every tensor of `a` outside module `skip` equals `b`'s, bit for bit."""
    theirs = b.state_dict()
    return all(
        torch.equal(tensor, theirs[name])
        for name, tensor in a.state_dict().items()
        if not (skip and name.startswith(f"{skip}."))
    )


# --- the classifier of every registered model ----------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_ends_in_its_classifier(name: str) -> None:
    # 96x96: every model takes it with its default arguments (catsdogs needs 78 px a side).
    net = build_model(name, in_channels=3, num_classes=7, image_size=(96, 96), device="meta")
    last = list(net.modules())[-1]
    assert isinstance(last, nn.Linear) and last.out_features == 7
    assert net.get_submodule(classifier_name(net)) is last


# --- copying the weights -------------------------------------------------------------


def test_the_same_classes_keep_the_parents_classifier() -> None:
    parent = _trained("convnet", _kwargs("convnet", 10, **CONVNET))
    child = build_model("convnet", **_kwargs("convnet", 10, **CONVNET))
    transfer_weights(child, parent.state_dict(), keep_head=True)
    assert _equal_except(child, parent)


def test_other_classes_get_a_new_classifier_and_every_other_tensor_exactly() -> None:
    parent = _trained("resnet", _kwargs("resnet", 10, **RESNET))
    child = build_model("resnet", **_kwargs("resnet", 3, **RESNET))
    fresh_head = child.head.weight.detach().clone()
    transfer_weights(child, parent.state_dict(), keep_head=False)
    assert _equal_except(child, parent, skip="head")
    assert torch.equal(child.head.weight, fresh_head)  # (3, 4): its own initialisation
    assert child.head.weight.shape == (3, 4)


def test_weights_of_another_shape_are_refused_naming_the_tensor() -> None:
    parent = _trained("convnet", _kwargs("convnet", 10, **CONVNET))
    child = build_model("convnet", **_kwargs("convnet", 10, **{**CONVNET, "width": 4}))
    with pytest.raises(ConfigError, match=r"conv1.weight is \[8, 1, 3, 3\] in the parent"):
        transfer_weights(child, parent.state_dict(), keep_head=True)


# --- freezing the backbone -----------------------------------------------------------


def _batches(count: int, classes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=generator)
        yield images, torch.randint(0, classes, (8,), generator=generator)


def test_a_frozen_backbone_keeps_its_weights_and_statistics_while_the_classifier_learns() -> None:
    parent = _trained("resnet", _kwargs("resnet", 10, **RESNET))
    child = build_model("resnet", **_kwargs("resnet", 3, **RESNET))
    transfer_weights(child, parent.state_dict(), keep_head=False)
    freeze_backbone(child)
    head_before = child.head.weight.detach().clone()
    optimizer = build_optimizer(child, "adamw", 1e-2, 5e-4, 0.9)
    prep = Preparation(mean=(0.5,), std=(0.25,), crop_padding=1, flip=False, channels_last=False)
    stepper = Stepper(FrozenBackbone(child), optimizer, torch.device("cpu"), prep)

    stepper.train_epoch(_batches(4, 3), lambda step: 1e-2, 0)

    # Parameters, running means and variances and num_batches_tracked: all the parent's.
    assert _equal_except(child, parent, skip="head")
    assert not torch.equal(child.head.weight, head_before)
    assert not child.bn1.training and child.head.training  # as train_epoch left them
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trainable == {id(child.head.weight), id(child.head.bias)}


def test_frozen_backbone_train_and_eval_switch_only_the_classifier() -> None:
    net = build_model("resnet9", **_kwargs("resnet9", 3, width=2))
    wrapper = FrozenBackbone(net)
    wrapper.train()
    assert [m.training for m in net.modules()] == [False] * (len(list(net.modules())) - 1) + [True]
    wrapper.eval()
    assert not any(m.training for m in net.modules())


def test_start_from_parent_copies_then_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = _trained("convnet", _kwargs("convnet", 10, **CONVNET))
    monkeypatch.setattr(finetune.ray, "get", lambda ref: ref)  # the "ref" is the dict itself
    record = ParentCheckpoint(sha256="ab" * 32, source="runs/parent", dataset="digits")
    shared = ParentWeights(weights=parent.state_dict(), keep_head=True, record=record)
    child = build_model("convnet", **_kwargs("convnet", 10, **CONVNET))
    start_from_parent(child, shared, freeze=True)
    assert _equal_except(child, parent)
    assert [n for n, p in child.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]


# --- the driver's checks of the parent -----------------------------------------------


def test_a_fitting_parent_is_pinned_by_its_manifest_sha256(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    parent = check_parent(str(path), "convnet", _kwargs("convnet", 10, **CONVNET), DIGITS)
    assert parent.record.sha256 == manifest_sha256(path)
    assert parent.record.source == str(path) and parent.record.dataset == "digits"
    assert parent.keep_head


def test_other_class_names_in_the_same_number_need_a_new_classifier(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    renamed = tuple(f"digit {d}" for d in range(10))
    kwargs = _kwargs("convnet", 10, **CONVNET)
    assert not check_parent(str(path), "convnet", kwargs, renamed).keep_head
    assert not check_parent(str(path), "convnet", kwargs, DIGITS[::-1]).keep_head


def test_a_resnet_may_change_image_size_and_classes(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "resnet", _kwargs("resnet", 10, **RESNET))
    child = _kwargs("resnet", 2, size=32, **RESNET)
    assert not check_parent(str(path), "resnet", child, ("cat", "dog")).keep_head


def test_another_width_is_refused_naming_the_argument_and_its_flag(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    child = _kwargs("convnet", 10, **{**CONVNET, "width": 16})
    with pytest.raises(ConfigError) as caught:
        check_parent(str(path), "convnet", child, DIGITS)
    message = str(caught.value)
    assert message.startswith(f"init_from: {path} does not fit this convnet: conv1.weight")
    assert "because width is 8 in the parent and 16 here" in message
    assert message.endswith("; use the parent's: --model-arg width=8")


def test_a_convnet_at_another_image_size_is_refused_naming_it(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    child = _kwargs("convnet", 10, size=16, **CONVNET)
    with pytest.raises(
        ConfigError, match=r"fc.weight is \[16, 64\] in the parent, \[16, 256\] here"
    ) as caught:
        check_parent(str(path), "convnet", child, DIGITS)
    assert "because image_size is [8, 8] in the parent and [16, 16] here" in str(caught.value)
    assert "--image-size 8 8" in str(caught.value)


def test_another_model_is_refused_naming_the_parents(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    with pytest.raises(ConfigError, match=r"holds a convnet, not a resnet9; .* --model convnet"):
        check_parent(str(path), "resnet9", _kwargs("resnet9", 10), DIGITS)


def test_other_channels_are_refused(tmp_path: Path) -> None:
    path, _ = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    rgb = resolve_kwargs("convnet", in_channels=3, num_classes=10, image_size=(8, 8), **CONVNET)
    with pytest.raises(ConfigError, match="takes 1-channel images, this run's data has 3"):
        check_parent(str(path), "convnet", rgb, DIGITS)


def test_a_missing_parent_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"init_from: .*nowhere: no checkpoint there"):
        check_parent(str(tmp_path / "nowhere"), "convnet", _kwargs("convnet", 10), DIGITS)


# --- the weights the driver shares ---------------------------------------------------


def test_a_parent_at_a_uri_is_copied_and_loaded_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, net = _save_parent(tmp_path / "parent", "convnet", _kwargs("convnet", 10, **CONVNET))
    monkeypatch.setattr(finetune.ray, "put", lambda value: value)
    uri = f"file://{path}"
    parent = check_parent(uri, "convnet", _kwargs("convnet", 10, **CONVNET), DIGITS)
    shared = share_parent(parent, freeze_backbone=False)
    weights: dict[str, torch.Tensor] = shared.weights  # ray.put was the identity
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert shared.record.source == uri


def test_a_parent_replaced_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = _kwargs("convnet", 10, **CONVNET)
    path, _ = _save_parent(tmp_path / "parent", "convnet", kwargs)
    parent = check_parent(str(path), "convnet", kwargs, DIGITS)
    _save_parent(path, "convnet", kwargs, classes=tuple("abcdefghij"))
    monkeypatch.setattr(finetune.ray, "put", lambda value: value)
    with pytest.raises(ConfigError, match=r"init_from: .*not the pinned"):
        share_parent(parent, freeze_backbone=True)


# --- the config and the driver's preparation -----------------------------------------


def test_freezing_without_a_parent_names_the_flag_to_add() -> None:
    with pytest.raises(ConfigError, match=r"freeze_backbone needs .* --init-from CHECKPOINT"):
        TrainConfig(freeze_backbone=True)
    assert TrainConfig(init_from="runs/parent", freeze_backbone=True).freeze_backbone


def test_prepare_keeps_the_parents_normalisation(tmp_path: Path) -> None:
    kwargs = _kwargs("convnet", 10, **CONVNET)
    path, _ = _save_parent(tmp_path / "parent", "convnet", kwargs)
    cfg = TrainConfig(
        dataset="digits",
        model="convnet",
        model_args=CONVNET,
        init_from=str(path),
        output=str(tmp_path / "out"),
    )
    prepared = trainer.prepare(cfg)
    assert prepared.parent is not None and prepared.parent.keep_head
    assert prepared.data.preprocessing == PARENT_NORM
    assert trainer.preparation(cfg, prepared.data).mean == PARENT_NORM.mean
