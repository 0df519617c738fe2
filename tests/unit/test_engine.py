"""The engine over arrays it may not write: Ray's object store maps them read-only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from raysight.checkpoint import Manifest, Preprocessing, load_checkpoint, save_checkpoint
from raysight.engine import Engine
from raysight.models import build_model, resolve_kwargs


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    torch.manual_seed(0)
    kwargs = resolve_kwargs("convnet", in_channels=1, num_classes=3, image_size=(8, 8),
                            padding="same")  # fmt: skip
    state = build_model("convnet", **kwargs).state_dict()
    manifest = Manifest.new(
        model="convnet",
        model_kwargs=kwargs,
        input_shape=(1, 8, 8),
        preprocessing=Preprocessing(mean=[0.5], std=[0.25]),
        class_names=["a", "b", "c"],
        dataset="digits",
        metrics={},
        train_config={},
        epoch=1,
    )
    return Engine(load_checkpoint(save_checkpoint(tmp_path, state_dict=state, manifest=manifest)))


def test_read_only_pixels_are_classified_without_a_warning(engine: Engine) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    frozen = pixels.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" UserWarning fails the test
        logits = engine.classify_pixels(frozen)
        inputs = engine.normalize(frozen)
        frozen_inputs = inputs.copy()
        frozen_inputs.flags.writeable = False
        again = engine.logits(frozen_inputs)
    np.testing.assert_array_equal(logits, engine.classify_pixels(pixels))
    np.testing.assert_allclose(again, logits, rtol=1e-6, atol=1e-6)
    assert not frozen.flags.writeable  # the caller's array is left as it was


def test_normalize_matches_trainings_preprocessing_and_wants_uint8(engine: Engine) -> None:
    from raysight.data.transforms import normalize
    from raysight.errors import InputError

    # Every pixel value, as training's torch transform turns it into model inputs.
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 1, 8, 8)
    expected = normalize(torch.from_numpy(pixels), [0.5], [0.25]).numpy()
    got = engine.normalize(pixels)
    assert got.dtype == np.float32 and got.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="uint8"):
        engine.normalize(pixels.astype(np.float32))


def test_the_model_runs_channels_last_with_the_logits_of_the_stored_layout(
    engine: Engine,
) -> None:
    # The engine converts the convolution weights to NHWC for speed; the answers must be
    # those of the model as it was saved (NCHW), to float rounding.
    convs = [m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)  # a 1-channel conv is both
    reference = build_model("convnet", **engine.manifest.model_kwargs)
    reference.load_state_dict(engine.model.state_dict())
    reference.eval()
    assert all(p.is_contiguous() for p in reference.parameters())
    inputs = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(engine.logits(inputs), expected, rtol=1e-5, atol=1e-6)
