"""Seldon MLServer's custom runtime for the bench: raysight's engine behind MLServer's
Open Inference Protocol server, one request per forward pass (MLServer's adaptive
batching is off, as it is by default).

MLServer imports this class by name (model-settings.json: "implementation":
"mlserver_model.RaysightModel") inside its own virtualenv.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import raysight_peer
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class RaysightModel(MLModel):
    """The checkpoint at the model settings' `parameters.uri`."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        if parameters is None or not parameters.uri:
            raise ValueError("model-settings.json: set parameters.uri to the checkpoint")
        self._engine = raysight_peer.load(parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # As MLServer's own examples do, the forward pass runs on the event loop.
        images = NumpyCodec.decode_input(payload.inputs[0])  # (B, C, H, W)
        outputs = raysight_peer.run(self._engine, images)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in outputs.items()],
        )

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """ModelStreamInfer: one answer per request, in order."""
        async for payload in payloads:
            yield await self.predict(payload)
