"""A grpc.aio server on loopback whose ModelInfer is a given coroutine over raw bytes: what
the load generator's tests drive, with no model and no protobuf parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc

RawInfer = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@asynccontextmanager
async def raw_infer_server(infer: RawInfer) -> AsyncIterator[str]:
    """Serve `infer` as inference.GRPCInferenceService/ModelInfer; yields HOST:PORT."""
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
