"""KServe's ModelServer for the bench: raysight's engine in a custom `kserve.Model`,
served over KServe's Open Inference Protocol gRPC server, one request per forward pass.

Runs inside KServe's own virtualenv:

    python bench/servers/peer/kserve_server.py --checkpoint DIR --model-name NAME \\
        --grpc-port P --http-port P2

KServe binds both of its listeners to every interface, with the host written into the
code: the gRPC server calls `add_insecure_port(f"[::]:{port}")` inside
`kserve.protocol.grpc.server.GRPCServer.start`, and the REST server builds its
`uvicorn.Config(host="0.0.0.0")` in `kserve.protocol.rest.server.RESTServer.__init__`.
`_bind_to_loopback` rebinds both to 127.0.0.1 before the server starts (see there).
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace
from typing import Any

LOOPBACK = "127.0.0.1"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    return parser.parse_args()


def _bind_to_loopback() -> None:
    """Make KServe listen on 127.0.0.1 only.

    gRPC: `GRPCServer.start` creates its server with the module-level name `aio` (grpc.aio)
    and binds "[::]:PORT" on it. We replace that name, in that module only, with a shim
    whose `server()` returns a real grpc.aio server whose `add_insecure_port` binds
    127.0.0.1:PORT instead.

    REST: `ModelServer.start` builds `RESTServer` by the name imported into
    kserve.model_server; a subclass that sets the uvicorn config's host to 127.0.0.1 after
    the original constructor (uvicorn reads `config.host` when it binds) takes its place.
    """
    import kserve.model_server
    import kserve.protocol.grpc.server as grpc_server
    from grpc import aio
    from kserve.protocol.rest.server import RESTServer

    def loopback_server(*args: Any, **kwargs: Any) -> aio.Server:
        server = aio.server(*args, **kwargs)
        bind = server.add_insecure_port

        def add_insecure_port(address: str) -> int:
            port = address.rsplit(":", 1)[1]
            return bind(f"{LOOPBACK}:{port}")

        server.add_insecure_port = add_insecure_port  # type: ignore[method-assign]
        return server

    grpc_server.aio = SimpleNamespace(server=loopback_server)  # type: ignore[assignment]

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = LOOPBACK

    kserve.model_server.RESTServer = LoopbackRESTServer  # type: ignore[misc]


def main() -> int:
    args = _arguments()
    # kserve.model_server parses sys.argv when imported; keep our flags from it.
    sys.argv = sys.argv[:1]
    import kserve
    import raysight_peer
    from kserve import InferOutput, InferRequest, InferResponse

    class RaysightModel(kserve.Model):
        """The checkpoint, loaded once; predict runs on the event loop, as in KServe's
        custom model examples."""

        def __init__(self, name: str, checkpoint: str) -> None:
            super().__init__(name)
            self.checkpoint = checkpoint
            self.engine: Any = None

        def load(self) -> bool:
            self.engine = raysight_peer.load(self.checkpoint)
            self.ready = True
            return self.ready

        def predict(
            self, payload: InferRequest, headers: dict[str, str] | None = None
        ) -> InferResponse:
            images = payload.inputs[0].as_numpy()  # (B, C, H, W), from raw_input_contents
            outputs = []
            for name, value in raysight_peer.run(self.engine, images).items():
                output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
                output.set_data_from_numpy(value, binary_data=True)
                outputs.append(output)
            return InferResponse(
                response_id=payload.id,
                model_name=self.name,
                infer_outputs=outputs,
                use_binary_outputs=True,
            )

    _bind_to_loopback()
    model = RaysightModel(args.model_name, args.checkpoint)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
