"""Run inside a virtualenv with kserve (not raysight's): KServe's own Python clients against
a running raysight, printing one JSON object of what they got back.

    python kserve_client_run.py GRPC_TARGET HTTP_BASE MODEL IMAGE_FILE...
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)


def _inputs(files: list[bytes], zeros: tuple[int, ...], binary: bool) -> list[list[InferInput]]:
    tensor = InferInput("images", list(zeros), "FP32")
    tensor.set_data_from_numpy(np.zeros(zeros, np.float32), binary_data=binary)
    images = InferInput("images", [len(files)], "BYTES")
    # In typed contents (JSON, or gRPC's bytes_contents) kserve takes only UTF-8 text, so
    # the files travel as base64 there, as KServe's examples send them.
    items = files if binary else [base64.b64encode(f).decode() for f in files]
    images.set_data_from_numpy(np.array(items, dtype=object), binary_data=binary)
    return [[tensor], [images]]


def _summary(response: Any) -> dict[str, Any]:
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return {
        "id": response.id,
        "shapes": {name: list(a.shape) for name, a in outputs.items()},
        "top": outputs["probabilities"].argmax(1).tolist(),
    }


async def main(grpc_target: str, http_base: str, model: str, paths: list[str]) -> dict:
    files = [Path(p).read_bytes() for p in paths]
    zeros = (2, 1, 8, 8)
    grpc_client = InferenceGRPCClient(grpc_target)
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    result: dict[str, Any] = {
        "grpc_health": [
            await grpc_client.is_server_live(),
            await grpc_client.is_server_ready(),
            await grpc_client.is_model_ready(model),
        ],
        "rest_health": [
            await rest.is_server_live(http_base),
            await rest.is_server_ready(http_base),
            await rest.is_model_ready(http_base, model),
        ],
    }
    for binary in (True, False):
        suffix = "raw" if binary else "typed"
        for i, kind in enumerate(("fp32", "bytes")):
            # Fresh inputs for each call: a gRPC call leaves kserve's InferInput changed.
            inputs = _inputs(files, zeros, binary)[i]
            request = InferRequest(model_name=model, infer_inputs=inputs, request_id="r1")
            result[f"grpc_{kind}_{suffix}"] = _summary(await grpc_client.infer(request))
            inputs = _inputs(files, zeros, binary)[i]
            request = InferRequest(model_name=model, infer_inputs=inputs, request_id="r1")
            answer = await rest.infer(http_base, request, model_name=model)
            result[f"rest_{kind}_{suffix}"] = _summary(answer)
    await grpc_client.close()
    await rest.close()
    return result


if __name__ == "__main__":
    answers = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.stdout.write(json.dumps(answers) + "\n")
