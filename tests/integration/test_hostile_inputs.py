"""Hostile input against a real server: thousands of generated malformed requests across the
OIP and image APIs. Each must get a clean code and a message that names the problem, never
INTERNAL, a traceback, a path or an internal name; valid requests sent in between must get
correct answers, and the replica must not restart.

    RAYSIGHT_HOSTILE_EXAMPLES=10000 RAYSIGHT_RELIABILITY_OUT=hostile.json \
        pytest tests/integration/test_hostile_inputs.py

writes the codes returned (docs/reliability.md holds the figures of such a run).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.codec.datatypes import DATATYPES
from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"
# Generated requests in all, about 70% OIP and 30% image API.
EXAMPLES = int(os.environ.get("RAYSIGHT_HOSTILE_EXAMPLES", "10000"))
ACCEPTABLE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"}
VALID_EVERY = 25  # a valid request after this many hostile ones
# What a client must never read in an error: a traceback, a source file, a path, Ray's or
# the deployment's internals.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/tmp/|/home/|site-packages|\bray\b|InferenceServer")

GENERATED = settings(
    max_examples=1,  # replaced per test
    deadline=None,
    database=None,
    derandomize=True,  # the same requests on every run, so CI is reproducible
    suppress_health_check=list(HealthCheck),
)


class Target:
    """The server under test, the codes it returned, and the valid requests' checks."""

    def __init__(self, address: str, engine: Engine) -> None:
        channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.oip = pb_grpc.GRPCInferenceServiceStub(channel)
        self.images = image_grpc.ImageServiceStub(channel)
        self.engine = engine
        self.codes: dict[str, Counter[str]] = {"oip": Counter(), "image": Counter()}
        self.sent = 0
        self.valid = 0
        test = load_arrays("digits", None, "test")
        self.pixels, self.labels = test.images[:4], test.labels[:4]

    def record(self, api: str, call: object) -> None:
        """Make one hostile call and check what came back."""
        try:
            call()  # type: ignore[operator]
            code, details = "OK", ""
        except grpc.RpcError as error:
            code, details = error.code().name, error.details() or ""
        self.codes[api][code] += 1
        assert code in ACCEPTABLE, (code, details)
        assert not LEAKS.search(details), details
        self.sent += 1
        if self.sent % VALID_EVERY == 0:
            self.check_valid()

    def check_valid(self) -> None:
        """A well-formed request gets the in-process model's answer."""
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="images", datatype="UINT8", shape=list(self.pixels.shape))
        request.raw_input_contents.append(self.pixels.tobytes())
        request.outputs.add(name="logits")
        reply = self.oip.ModelInfer(request, timeout=30)
        logits = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(
            len(self.pixels), -1
        )
        expected = self.engine.classify_pixels(self.pixels)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        self.valid += 1


@pytest.fixture(scope="module")
def target(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    checkpoint = digits_checkpoint(tmp_path_factory.mktemp("hostile") / "ckpt", seed=0)
    port = free_port()
    settings_ = ServeSettings(checkpoint=str(checkpoint), max_batch_size=16)
    try:
        runner.deploy(runner.serve_config(settings_, grpc_port=port, http_port=free_port()))
        yield Target(f"127.0.0.1:{port}", Engine.from_directory(checkpoint))
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _replicas() -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id for a in actors if a.class_name.endswith(":InferenceServer")}


# ---- OIP requests ------------------------------------------------------------------------

_SHAPES = st.one_of(
    st.just([1, 1, 8, 8]),
    st.just([2, 1, 8, 8]),
    st.lists(st.integers(-3, 40), max_size=6),
    st.lists(st.sampled_from([0, 1, 8, 2**31, 2**40, 2**62]), max_size=5),
)
# The model's two datatypes often, so requests get past the datatype check to the rest.
_DATATYPES = st.sampled_from(
    [*["FP32", "UINT8"] * 6, *DATATYPES, "BYTES", "FP8", "", "fp32", "UINT8 "]
)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def _tensor(draw: st.DrawFn, request: pb.ModelInferRequest, raw: bool) -> None:
    shape = draw(_SHAPES)
    datatype = draw(_DATATYPES)
    tensor = request.inputs.add(
        name=draw(st.sampled_from(["images", "images", "images", "x", "", "IMAGES"])),
        datatype=datatype,
        shape=shape,
    )
    if raw:
        count = int(np.prod([max(d, 0) for d in shape])) if shape else 0
        exact = count <= 4096 and draw(st.booleans())  # the byte length the shape needs
        itemsize = DATATYPES[datatype].itemsize if datatype in DATATYPES else 4
        size = count * itemsize if exact else draw(st.integers(0, 4096))
        data = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f\xc0\x00\x00"])) * size
        request.raw_input_contents.append(data[:size])
        return
    field = draw(st.sampled_from(["fp32", "int", "uint", "uint64", "bool", "bytes", "none"]))
    values = draw(st.integers(0, 80))
    if field == "fp32":
        tensor.contents.fp32_contents.extend(
            draw(st.lists(_FLOATS, min_size=values, max_size=values))
        )
    elif field == "int":
        tensor.contents.int_contents.extend([draw(st.integers(-(2**31), 2**31 - 1))] * values)
    elif field == "uint":
        tensor.contents.uint_contents.extend([draw(st.integers(0, 2**32 - 1))] * values)
    elif field == "uint64":
        tensor.contents.uint64_contents.extend([draw(st.integers(0, 2**64 - 1))] * values)
    elif field == "bool":
        tensor.contents.bool_contents.extend([True] * values)
    elif field == "bytes":
        tensor.contents.bytes_contents.extend([b"\x00" * values])


@st.composite
def oip_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        # Mostly the right model, so the checks behind the name get most of the requests.
        model_name=draw(st.sampled_from([*[MODEL] * 8, "", "other", "x" * 300])),
        model_version=draw(st.sampled_from([*[""] * 9, "nope"])),
        id=draw(st.text(max_size=20)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        draw(_tensor(request, raw))
    if draw(st.integers(0, 9)) == 0:  # raw and typed contents mixed
        request.raw_input_contents.append(b"\x00" * 256)
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(
            name=draw(st.sampled_from(["logits", "probabilities", "logits", "nope", ""]))
        )
        k = draw(st.one_of(st.none(), st.integers(-3, 20)))
        if k is not None:
            output.parameters["classification"].int64_param = k
        elif draw(st.booleans()):
            output.parameters["classification"].string_param = "three"
    return request


# ---- image requests ----------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring `width` x `height`, and no pixels at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@st.composite
def image_requests(draw: st.DrawFn) -> image_pb.ClassifyRequest:
    kind = draw(
        st.sampled_from(
            ["random", "png", "truncated", "other-format", "bomb", "polyglot", "jpeg", "empty"]
        )
    )
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1"]))
    picture = Image.new(mode, size, color=draw(st.integers(0, 1)))
    if kind == "random":
        data = draw(st.binary(max_size=2048))
    elif kind == "png":
        data = _encoded(picture, "PNG")
    elif kind == "truncated":
        whole = _encoded(picture.convert("RGB"), draw(st.sampled_from(["PNG", "JPEG"])))
        data = whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    elif kind == "other-format":
        fmt = draw(st.sampled_from(["GIF", "BMP", "TIFF", "ICO", "PPM"]))
        data = _encoded(picture.convert("RGB"), fmt)
    elif kind == "bomb":
        side = draw(st.sampled_from([10_000, 65_535, 2**31 - 1]))
        data = _png_header(side, side) + draw(st.binary(max_size=64))
    elif kind == "polyglot":
        data = _encoded(picture.convert("RGB"), "PNG") + _encoded(picture.convert("RGB"), "GIF")
    elif kind == "jpeg":
        data = _encoded(picture.convert("RGB"), "JPEG")
    else:
        data = b""
    return image_pb.ClassifyRequest(
        image=data,
        top_k=draw(st.integers(-5, 50)),
        model_name=draw(st.sampled_from(["", MODEL, MODEL, MODEL, "other"])),
    )


# ---- the test ----------------------------------------------------------------------------


def test_generated_hostile_requests_get_clean_codes(target: Target) -> None:
    replicas = _replicas()
    assert replicas, "no InferenceServer replica is alive"

    @settings(GENERATED, max_examples=EXAMPLES * 7 // 10)
    @given(oip_requests())
    def oip(request: pb.ModelInferRequest) -> None:
        target.record("oip", lambda: target.oip.ModelInfer(request, timeout=30))

    @settings(GENERATED, max_examples=EXAMPLES - EXAMPLES * 7 // 10)
    @given(image_requests())
    def image(request: image_pb.ClassifyRequest) -> None:
        target.record("image", lambda: target.images.Classify(request, timeout=30))

    oip()
    image()
    target.check_valid()
    codes = target.codes
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        figures = {api: dict(c.most_common()) for api, c in codes.items()}
        Path(out).write_text(json.dumps({**figures, "valid_interleaved": target.valid}, indent=2))
    assert target.sent == EXAMPLES
    # Most generated requests are malformed: a generator that mostly made valid ones would
    # test nothing.
    assert sum(n for c in codes.values() for k, n in c.items() if k != "OK") > EXAMPLES // 2
    assert _replicas() == replicas  # no replica died or was replaced
