"""Sweep over every registered model, plus registry and architecture checks."""

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812  (the conventional alias)

from raysight.errors import ConfigError
from raysight.models import MODELS, build_model, catsdogs, convnet, model_names, resolve_kwargs
from raysight.models.resnet import drop_branch

NUM_CLASSES = 10
BATCH = 2  # two samples: BatchNorm in training mode needs more than one value per channel

# (C, H, W) of MNIST, CIFAR, the 8x8 scikit-learn digits, and a larger colour image.
INPUT_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 64)]


def _shape_id(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


# Smallest side of the models whose valid convolutions shrink the image, by padding.
MIN_SIDES = {
    "convnet": {padding: convnet.min_image_side(padding) for padding in convnet.PADDINGS},
    "catsdogs": {padding: catsdogs.min_image_side(padding) for padding in convnet.PADDINGS},
}


def _extra_kwargs(name: str, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Arguments a model needs for this input: the convnets need same padding when small."""
    if name in MIN_SIDES and min(shape[1:]) < MIN_SIDES[name]["valid"]:
        return {"padding": "same"}
    return {}


def _skip_if_too_small(name: str, shape: tuple[int, int, int]) -> None:
    if name in MIN_SIDES and min(shape[1:]) < MIN_SIDES[name]["same"]:
        pytest.skip(f"{name} needs {MIN_SIDES[name]['same']} px a side even with same padding")


def _build(name: str, shape: tuple[int, int, int], **kwargs: Any) -> torch.nn.Module:
    return build_model(
        name,
        in_channels=shape[0],
        num_classes=NUM_CLASSES,
        image_size=(shape[1], shape[2]),
        **_extra_kwargs(name, shape),
        **kwargs,
    )


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("name", model_names())
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    _skip_if_too_small(name, shape)
    torch.manual_seed(0)
    model = _build(name, shape)
    images = torch.randn(BATCH, *shape)
    labels = torch.arange(BATCH) % NUM_CLASSES

    logits = model(images)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits).all()

    F.cross_entropy(logits, labels).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", model_names())
def test_eval_output_does_not_depend_on_the_batch(name: str) -> None:
    # Serving batches requests together; in eval mode each result must be the one the
    # sample would get alone (BatchNorm uses running statistics, not the batch's).
    torch.manual_seed(0)
    model = _build(name, (1, 28, 28)).eval()
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(image[None]) for image in images])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", model_names())
def test_resolved_kwargs_rebuild_the_same_architecture(name: str) -> None:
    shape = (1, 16, 16)
    extra = _extra_kwargs(name, shape)
    resolved = resolve_kwargs(
        name, in_channels=1, num_classes=NUM_CLASSES, image_size=(16, 16), **extra
    )
    stored = json.loads(json.dumps(resolved))
    assert stored == resolved

    # The meta device builds without allocating memory; only the shapes matter here.
    original = _build(name, shape, device="meta")
    rebuilt = build_model(name, **stored, device="meta")
    original_shapes = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    rebuilt_shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert rebuilt_shapes == original_shapes


def test_resolve_kwargs_is_complete_and_leaves_out_placement() -> None:
    resolved = resolve_kwargs(
        "resnet18", in_channels=3, num_classes=100, image_size=(32, 32), device="cpu"
    )
    assert resolved == {
        "in_channels": 3,
        "num_classes": 100,
        "image_size": [32, 32],
        "layers": [2, 2, 2, 2],
        "width": 64,
        "dropout": 0.0,
        "stochastic_depth": 0.0,
    }


def test_user_kwargs_override_presets() -> None:
    resolved = resolve_kwargs(
        "resnet", in_channels=3, num_classes=10, image_size=(32, 32), layers=(1, 1), width=8
    )
    assert resolved["layers"] == [1, 1]
    assert resolved["width"] == 8
    model = build_model("resnet", **resolved)
    assert model(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, NUM_CLASSES)


def test_every_spec_is_keyed_by_its_name() -> None:
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.description


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="vgg16") as info:
        build_model("vgg16", in_channels=3, num_classes=10, image_size=(32, 32))
    for name in model_names():
        assert name in str(info.value)


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(ConfigError, match="stochastic_depth"):
        build_model(
            "convnet", in_channels=1, num_classes=10, image_size=(28, 28), stochastic_depth=0.1
        )


def test_non_json_kwarg_is_rejected() -> None:
    with pytest.raises(ConfigError, match="width"):
        resolve_kwargs("resnet", in_channels=3, num_classes=10, image_size=(32, 32), width=object())


@pytest.mark.parametrize(
    ("name", "image_size", "kwargs"),
    [
        ("convnet", (8, 8), {}),
        ("convnet", (17, 28), {}),
        ("convnet", (3, 3), {"padding": "same"}),
        ("resnet9", (4, 4), {}),
        ("resnet9", (32, 7), {}),
        ("catsdogs", (64, 64), {}),
        ("catsdogs", (180, 15), {"padding": "same"}),
    ],
)
def test_too_small_input_names_image_size(
    name: str, image_size: tuple[int, int], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match="image_size"):
        build_model(name, in_channels=1, num_classes=10, image_size=image_size, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"padding": "reflect"}, "padding"),
        ({"width": 0}, "width"),
        ({"in_channels": 0}, "in_channels"),
        ({"image_size": (28,)}, "image_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": True}, "dropout"),
        ({"dropout": "0.5"}, "dropout"),
    ],
)
def test_invalid_argument_is_named(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"in_channels": 1, "num_classes": 10, "image_size": (28, 28)}
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        build_model("convnet", **arguments)


def test_resnet_rejects_empty_layers() -> None:
    with pytest.raises(ConfigError, match="layers"):
        build_model("resnet", in_channels=3, num_classes=10, image_size=(32, 32), layers=())


def test_convnet_matches_the_book_parameter_count() -> None:
    # Keras summary of the book's model: 320 + 18,496 + 36,928 + 36,928 + 650.
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=(28, 28))
    assert _param_count(model) == 93_322


def test_convnet_same_padding_on_digits_flattens_2x2x64() -> None:
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=(8, 8), padding="same")
    assert model.fc.in_features == 2 * 2 * 64


def test_resnet18_matches_the_standard_cifar_parameter_count() -> None:
    model = build_model("resnet18", in_channels=3, num_classes=10, image_size=(32, 32))
    assert _param_count(model) == 11_173_962


def test_resnet_residual_branches_start_as_identity() -> None:
    model = build_model("resnet18", in_channels=3, num_classes=10, image_size=(32, 32))
    last_gammas = [m.bn2.weight for m in model.modules() if hasattr(m, "bn2")]
    assert len(last_gammas) == 8
    assert all(bool((gamma == 0).all()) for gamma in last_gammas)


def test_layers_follow_the_requested_device_and_dtype() -> None:
    for name in model_names():
        model = _build(name, (3, 32, 32), device="meta", dtype=torch.float64)
        for tensor in model.state_dict().values():
            assert tensor.device.type == "meta"
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float64


@pytest.mark.parametrize("name", model_names())
def test_the_classifier_is_the_last_module(name: str) -> None:
    # Fine-tuning takes the last Linear as the classifier; dropout must come before it.
    model = _build(name, (3, 32, 32), dropout=0.3, device="meta")
    last = list(model.modules())[-1]
    assert isinstance(last, torch.nn.Linear)
    assert last.out_features == NUM_CLASSES


@pytest.mark.parametrize("name", model_names())
def test_dropout_is_a_stored_argument_that_acts_in_training_only(name: str) -> None:
    shape = (3, 16, 16)
    resolved = resolve_kwargs(
        name,
        in_channels=3,
        num_classes=NUM_CLASSES,
        image_size=(16, 16),
        dropout=0.5,
        **_extra_kwargs(name, shape),
    )
    assert resolved["dropout"] == 0.5
    torch.manual_seed(0)
    model = build_model(name, **resolved)
    images = torch.randn(4, *shape)
    assert not torch.equal(model(images), model(images))  # a new mask each pass
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))


@pytest.mark.parametrize("name", ["convnet", "resnet9", "resnet18"])
def test_arguments_stored_before_dropout_existed_rebuild_the_same_model(name: str) -> None:
    shape = (3, 16, 16)
    current = resolve_kwargs(
        name,
        in_channels=3,
        num_classes=NUM_CLASSES,
        image_size=(16, 16),
        **_extra_kwargs(name, shape),
    )
    assert current["dropout"] == 0.0
    # What a checkpoint written before these arguments holds: the rest, unchanged.
    stored = {k: v for k, v in current.items() if k not in ("dropout", "stochastic_depth")}
    torch.manual_seed(0)
    saved = build_model(name, **stored).eval()
    rebuilt = build_model(name, **stored).eval()
    # The weights load key for key, and the rebuilt model computes what the saved one did.
    rebuilt.load_state_dict(saved.state_dict(), strict=True)
    images = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), saved(images))
    # Dropout adds no parameters or buffers, so such weights load into a model with it too.
    with_dropout = build_model(name, **{**stored, "dropout": 0.5})
    with_dropout.load_state_dict(saved.state_dict(), strict=True)
    assert not any(isinstance(m, torch.nn.Dropout) for m in saved.modules())


def test_stochastic_depth_grows_linearly_to_the_last_block() -> None:
    model = build_model(
        "resnet18", in_channels=3, num_classes=10, image_size=(32, 32), stochastic_depth=0.2
    )
    rates = [m.drop_rate for m in model.modules() if hasattr(m, "drop_rate")]
    assert rates == pytest.approx([0.2 * depth / 8 for depth in range(1, 9)])
    plain = build_model("resnet18", in_channels=3, num_classes=10, image_size=(32, 32))
    assert all(m.drop_rate == 0.0 for m in plain.modules() if hasattr(m, "drop_rate"))
    with pytest.raises(ConfigError, match="stochastic_depth"):
        build_model(
            "resnet18", in_channels=3, num_classes=10, image_size=(32, 32), stochastic_depth=1.0
        )


def test_drop_branch_drops_whole_samples_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    branch = torch.ones(4000, 2, 3, 3)
    dropped = drop_branch(branch, 0.25, training=True)
    per_sample = dropped.flatten(1)
    # Each sample's branch is either all zero or all scaled by 1 / (1 - rate).
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)
    assert float((per_sample[:, 0] == 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(dropped.mean()) == pytest.approx(1.0, abs=0.05)
    assert drop_branch(branch, 0.25, training=False) is branch


def test_catsdogs_matches_the_book_parameter_count() -> None:
    # Keras summary of the book's model (one sigmoid output): 991,041 parameters.
    model = build_model("catsdogs", in_channels=3, num_classes=1, image_size=(180, 180))
    assert _param_count(model) == 991_041
    assert model.head.in_features == 7 * 7 * 256
    assert isinstance(model.dropout, torch.nn.Dropout)
    assert model.dropout.p == 0.5


@pytest.mark.parametrize(
    ("side", "padding", "flat"), [(180, "valid", 7 * 7 * 256), (64, "same", 4 * 4 * 256)]
)
def test_catsdogs_builds_on_meta_and_classifies(side: int, padding: str, flat: int) -> None:
    meta = build_model(
        "catsdogs",
        in_channels=3,
        num_classes=2,
        image_size=(side, side),
        padding=padding,
        device="meta",
    )
    assert meta.head.in_features == flat
    model = build_model(
        "catsdogs", in_channels=3, num_classes=2, image_size=(side, side), padding=padding
    )
    assert model(torch.randn(BATCH, 3, side, side)).shape == (BATCH, 2)


def test_catsdogs_too_small_names_the_smallest_size_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"at least 78x78; use padding='same'"):
        build_model("catsdogs", in_channels=3, num_classes=2, image_size=(64, 64))
    with pytest.raises(ConfigError, match=r"at least 16x16$"):
        build_model("catsdogs", in_channels=3, num_classes=2, image_size=(15, 15), padding="same")
