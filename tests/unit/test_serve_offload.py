"""Which requests are prepared off the event loop, and that they are."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.codec import oip
from raysight.serve import images, oip_service
from raysight.serve.offload import INLINE_BYTES, INLINE_PIXEL_BYTES, Offloader


def _request(array: np.ndarray, *, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    oip.encode_inputs(request, {"images": array}, raw=raw)
    return request


@pytest.mark.parametrize(
    ("array", "raw", "heavy"),
    [
        # Raw FP32 is viewed in place, whatever its size.
        (np.zeros((64, 3, 64, 64), np.float32), True, False),
        (np.zeros((32, 1, 28, 28), np.uint8), True, False),  # 24.5 KiB of pixels
        (np.zeros((8, 3, 224, 224), np.uint8), True, True),  # 1,176 KiB of pixels
        (np.zeros((1, 1, 28, 28), np.float32), False, False),  # 3 KiB typed
        (np.zeros((8, 1, 28, 28), np.float32), False, True),  # 24.5 KiB typed
    ],
    ids=["raw-fp32", "raw-uint8-small", "raw-uint8-large", "typed-small", "typed-large"],
)
def test_oip_requests_are_heavy_by_their_costly_bytes(
    array: np.ndarray, raw: bool, heavy: bool
) -> None:
    assert oip_service.is_heavy(_request(array, raw=raw)) is heavy


def test_an_oip_request_that_lies_about_its_shape_is_cheap_to_judge() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="images", datatype="FP32", shape=[10**9, -1, 8, 8])
    request.inputs.add(name="other", datatype="NOPE", shape=[10**9])
    assert oip_service.is_heavy(request) is False  # a negative dimension counts as 0


def test_images_are_heavy_by_their_encoded_size() -> None:
    assert not images.is_heavy(image_pb.ClassifyRequest(image=b"x" * INLINE_BYTES))
    assert images.is_heavy(image_pb.ClassifyRequest(image=b"x" * (INLINE_BYTES + 1)))
    assert INLINE_PIXEL_BYTES > INLINE_BYTES  # normalising is the cheaper work per byte


def test_offloader_runs_heavy_work_in_its_threads_and_light_work_inline() -> None:
    offloader = Offloader()

    async def main() -> tuple[str, str]:
        def name(tag: str) -> str:
            return f"{tag}:{threading.current_thread().name}"

        return await offloader.run(False, name, "light"), await offloader.run(
            True, name, tag="heavy"
        )

    try:
        light, heavy = asyncio.run(main())
    finally:
        offloader.close()
    assert light == f"light:{threading.main_thread().name}"
    assert heavy.startswith("heavy:raysight-prep")


def test_encoded_images_in_an_oip_request_are_heavy_by_their_size() -> None:
    def request(files: list[bytes], *, raw: bool) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="m")
        tensor = message.inputs.add(name="images", datatype="BYTES", shape=[len(files)])
        if raw:
            message.raw_input_contents.append(
                b"".join(len(f).to_bytes(4, "little") + f for f in files)
            )
        else:
            tensor.contents.bytes_contents.extend(files)
        return message

    small, large = [b"x" * 1000] * 4, [b"x" * 1000] * 17  # 4 KB; 17 KB > INLINE_BYTES
    for raw in (True, False):
        assert not oip_service.is_heavy(request(small, raw=raw))
        assert oip_service.is_heavy(request(large, raw=raw))
