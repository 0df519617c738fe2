"""A bare grpc.aio Open Inference Protocol server in one process: the transport limit.

Without --checkpoint ("bare") it answers every ModelInfer with the same precomputed bytes,
never parsing the request: what gRPC and this machine allow with no work at all. With
--checkpoint ("bare+engine") it decodes with raysight's codec, batches with the replica's
own batcher (`raysight.serve.batching`: up to --max-batch-size images a pass, a pass as soon
as the model is free), runs raysight's engine in its worker thread and encodes the answer:
the transport plus compute limit, without Ray Serve. Both also answer ModelStreamInfer (in
order), the image API's Classify, ServerReady and gRPC health.

    python bench/servers/bare.py --port 9100 [--checkpoint runs/digits]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2_grpc

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.allocator import retain_freed_memory
from raysight.codec import oip
from raysight.codec.image import ImageLimits, decode_image
from raysight.errors import InputError
from raysight.serve.batch_policy import BatchLimits
from raysight.serve.batching import Batcher, shorten_switch_interval
from raysight.serve.errors import status_for

SERVICE = "inference.GRPCInferenceService"
IMAGE_SERVICE = "raysight.v1.ImageService"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

logger = logging.getLogger("bench.bare")


class EngineServicer:
    """decode -> batch -> encode with raysight's codec and engine, no Ray."""

    def __init__(
        self,
        checkpoint: str,
        device: str,
        max_batch_size: int,
        batch_wait_s: float,
        preferred_batch_size: int,
    ) -> None:
        from raysight.serve.model import load_served_model  # torch and Ray: only here

        self.model = load_served_model(checkpoint, "", device)
        self.max_batch_size = max_batch_size
        self.limits = ImageLimits()
        limits = BatchLimits(
            max_batch_size=max_batch_size,
            max_wait_s=batch_wait_s,
            preferred_batch_size=preferred_batch_size,
        )
        self.batcher: Batcher[None] = Batcher(lambda _, batch: self.model.run(batch), limits)
        shorten_switch_interval()  # as the replica does
        retain_freed_memory()

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        tensors = oip.decode_inputs(request, max_batch_size=self.max_batch_size)
        tensor = tensors.get("images")
        if tensor is None or tensor.shape[1:] != self.model.input_shape:
            raise InputError('inputs: expected one input "images" of the model\'s shape')
        inputs = self.model.engine.normalize(tensor) if tensor.dtype == np.uint8 else tensor
        outputs = await self.batcher.submit(None, np.ascontiguousarray(inputs, dtype=np.float32))
        response = pb.ModelInferResponse(
            model_name=self.model.name, model_version=self.model.version, id=request.id
        )
        oip.encode_outputs(response, outputs, requested=[o.name for o in request.outputs])
        return response

    async def classify(self, request: image_pb.ClassifyRequest) -> image_pb.ClassifyResponse:
        channels, height, width = self.model.input_shape
        pixels = decode_image(
            request.image, size=(height, width), channels=channels, limits=self.limits
        )  # (C, H, W) uint8
        inputs = self.model.engine.normalize(pixels[None])  # (1, C, H, W) float32
        probabilities = (await self.batcher.submit(None, inputs))["probabilities"][0]  # (K,)
        best = np.argsort(-probabilities, kind="stable")[: request.top_k or 5]
        names = self.model.engine.class_names
        return image_pb.ClassifyResponse(
            predictions=[
                image_pb.Prediction(
                    label=names[i], class_index=int(i), score=float(probabilities[i])
                )
                for i in best
            ],
            model_name=self.model.name,
            model_version=self.model.version,
            request_id=request.request_id,
        )


def _fixed_infer_response(classes: int = 10) -> pb.ModelInferResponse:
    """What a 1-image answer of a 10-class model looks like: two (1, K) FP32 outputs."""
    response = pb.ModelInferResponse(model_name="bare", model_version="1")
    for name in ("logits", "probabilities"):
        response.outputs.add(name=name, datatype="FP32", shape=[1, classes])
        response.raw_output_contents.append(np.zeros(classes, dtype="<f4").tobytes())
    return response


def _handlers(engine: EngineServicer | None) -> list[grpc.GenericRpcHandler]:
    """The methods served, as explicit handlers (no generated servicer, whose unimplemented
    methods would shadow the raw ones)."""
    fixed = _fixed_infer_response()
    fixed_bytes = fixed.SerializeToString()
    fixed_classify = image_pb.ClassifyResponse(
        predictions=[image_pb.Prediction(label="0", class_index=0, score=1.0)], model_name="bare"
    )

    async def abort(context: Any, exc: Exception) -> NoReturn:
        status = status_for(exc, "bench")  # raysight's error table: raysight's codes
        await context.abort(status.code, status.details)
        raise AssertionError("unreachable: context.abort raises")

    async def model_infer_raw(request: bytes, context: Any) -> bytes:
        return fixed_bytes

    async def model_infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        assert engine is not None
        try:
            return await engine.infer(request)
        except Exception as exc:
            await abort(context, exc)

    async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        if engine is None:
            response = pb.ModelInferResponse()
            response.CopyFrom(fixed)
            response.id = request.id
            return pb.ModelStreamInferResponse(infer_response=response)
        try:
            return pb.ModelStreamInferResponse(infer_response=await engine.infer(request))
        except Exception as exc:  # in band, as raysight answers a failing stream item
            return pb.ModelStreamInferResponse(error_message=status_for(exc, "bench").details)

    async def model_stream_infer(
        requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            yield await answer(request)

    async def classify(
        request: image_pb.ClassifyRequest, context: Any
    ) -> image_pb.ClassifyResponse:
        if engine is None:
            return fixed_classify
        try:
            return await engine.classify(request)
        except Exception as exc:
            await abort(context, exc)

    async def server_ready(request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def server_live(request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    infer = (
        grpc.unary_unary_rpc_method_handler(model_infer_raw)  # bytes in, bytes out
        if engine is None
        else grpc.unary_unary_rpc_method_handler(
            model_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
    )
    oip_methods = {
        "ModelInfer": infer,
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        ),
        "ServerReady": grpc.unary_unary_rpc_method_handler(
            server_ready,
            request_deserializer=pb.ServerReadyRequest.FromString,
            response_serializer=pb.ServerReadyResponse.SerializeToString,
        ),
        "ServerLive": grpc.unary_unary_rpc_method_handler(
            server_live,
            request_deserializer=pb.ServerLiveRequest.FromString,
            response_serializer=pb.ServerLiveResponse.SerializeToString,
        ),
    }
    image_methods = {
        "Classify": grpc.unary_unary_rpc_method_handler(
            classify,
            request_deserializer=image_pb.ClassifyRequest.FromString,
            response_serializer=image_pb.ClassifyResponse.SerializeToString,
        )
    }
    return [
        grpc.method_handlers_generic_handler(SERVICE, oip_methods),
        grpc.method_handlers_generic_handler(IMAGE_SERVICE, image_methods),
    ]


async def serve(port: int, engine: EngineServicer | None) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
    )
    server.add_generic_rpc_handlers(_handlers(engine))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    logger.info("serving on 127.0.0.1:%d (%s)", port, "engine" if engine else "no work")
    await stopping.wait()
    await server.stop(grace=1)


def _serving_default(name: str) -> Any:
    """A ServeSettings field's default, so the limit server batches as the replica does."""
    from raysight.serve.settings import ServeSettings

    return next(f.default for f in dataclasses.fields(ServeSettings) if f.name == name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--checkpoint", help="run raysight's engine on this checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--batch-wait-s", type=float, default=0.005, help="the most a batch waits, when it pays"
    )
    parser.add_argument(
        "--preferred-batch-size",
        type=int,
        default=_serving_default("preferred_batch_size"),
        help="rows a pass gathers towards under load (the replica's default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = None
    if args.checkpoint:
        import torch

        torch.set_num_threads(args.threads)
        engine = EngineServicer(
            args.checkpoint,
            args.device,
            args.max_batch_size,
            args.batch_wait_s,
            args.preferred_batch_size,
        )
    asyncio.run(serve(args.port, engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
