"""The image API's answers (raysight.v1.ImageService), apart from transport and batching.

Encoded image in, labels out: decode and normalise before the batch, rank after it.
Nothing here holds state or knows about Ray.
"""

from __future__ import annotations

import numpy as np

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.codec.classification import top_classes
from raysight.codec.image import decode_image
from raysight.errors import InputError
from raysight.serve.errors import Status
from raysight.serve.model import ServedModel
from raysight.serve.offload import INLINE_BYTES
from raysight.serve.settings import ServeSettings


def is_heavy(request: image_pb.ClassifyRequest) -> bool:
    """Whether decoding the image is worth a worker thread (see serve/offload.py)."""
    return len(request.image) > INLINE_BYTES


def model_inputs(
    request: image_pb.ClassifyRequest, model: ServedModel, settings: ServeSettings
) -> np.ndarray:
    """The request's image as a normalised (1, C, H, W) float32 batch of one.

    Raises:
        InputError: If top_k is negative, or the image is empty, too large, of a format not
            accepted, or corrupt.
    """
    if request.top_k < 0:  # checked first: a request that cannot be answered costs no decode
        raise InputError(f"top_k must be >= 0, got {request.top_k}", reason="bad_top_k")
    channels, height, width = model.input_shape
    pixels = decode_image(
        request.image, size=(height, width), channels=channels, limits=settings.image_limits
    )  # (C, H, W) uint8
    return model.engine.normalize(pixels[None])  # (1, C, H, W) float32


def classify_response(
    request: image_pb.ClassifyRequest,
    model: ServedModel,
    settings: ServeSettings,
    probabilities: np.ndarray,
) -> image_pb.ClassifyResponse:
    """The top-k labels of one image, best first, from its (K,) probabilities."""
    k = min(request.top_k or settings.top_k, model.num_classes)
    # The same ranking as Triton's classification extension: ties keep the lower index first.
    best = top_classes(probabilities[None], k)[0]  # (k,) class indices
    return image_pb.ClassifyResponse(
        predictions=[
            image_pb.Prediction(
                label=model.engine.class_names[i], class_index=int(i), score=float(probabilities[i])
            )
            for i in best
        ],
        model_name=model.name,
        model_version=model.version,
        request_id=request.request_id,
    )


def stream_failure(request: image_pb.ClassifyRequest, status: Status) -> image_pb.ClassifyResponse:
    """A failed stream request's answer: its id and the error, no predictions."""
    return image_pb.ClassifyResponse(request_id=request.request_id, error=status.details)
