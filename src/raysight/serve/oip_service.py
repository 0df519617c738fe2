"""The Open Inference Protocol's answers, apart from transport and batching.

Each function turns a request and the served model into a response or into model-ready
inputs, so the deployment's RPC methods stay decode -> call -> encode. Nothing here holds
state or knows about Ray; errors are domain errors, mapped to codes by serve/errors.py.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from raysight import __version__, imaging
from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import model_config_pb2 as mc
from raysight.codec import classification, oip
from raysight.codec.datatypes import DATATYPES
from raysight.codec.image import decode_image
from raysight.errors import InputError
from raysight.serve.errors import Status
from raysight.serve.model import INPUT_NAME, ServedModel
from raysight.serve.offload import INLINE_BYTES, INLINE_PIXEL_BYTES
from raysight.serve.settings import ServeSettings

# The forms the one input may take, and what each means. All are always accepted; the
# `input_datatype` setting only chooses which tensor form metadata advertises. BYTES carries
# one encoded image file a row, shape [B] (as OpenVINO Model Server takes images over this
# protocol, and Triton's clients send BYTES tensors), prepared as the image API prepares one.
_INPUT_DATATYPES = {"FP32": "normalised", "UINT8": "pixels"}
_ENCODED_DATATYPES = {"BYTES": "encoded images"}
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "UINT8": mc.TYPE_UINT8}

# Triton's protocol extensions this server implements. Not model_repository: it means index,
# load and unload, and a replica serves the one checkpoint of its settings (RepositoryIndex
# alone is answered).
EXTENSIONS = ("classification", "model_configuration", "statistics")

LABEL_FILENAME = "labels.txt"
"""The name ModelConfig gives the outputs' label file (the checkpoint's class names)."""


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name="raysight", version=__version__, extensions=list(EXTENSIONS)
    )


def model_metadata(model: ServedModel, settings: ServeSettings) -> pb.ModelMetadataResponse:
    """The model's tensors as the settings serve them, with the batch dimension as -1."""
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[model.version],
        platform="pytorch",
        inputs=[
            pb.ModelMetadataResponse.TensorMetadata(
                name=INPUT_NAME, datatype=settings.input_datatype, shape=[-1, *model.input_shape]
            )
        ],
        outputs=[
            pb.ModelMetadataResponse.TensorMetadata(
                name=name, datatype="FP32", shape=[-1, model.num_classes]
            )
            for name in settings.served_outputs
        ],
    )


def model_config(model: ServedModel, settings: ServeSettings) -> pb.ModelConfigResponse:
    """Triton's model configuration, stating the batching the server does: max_batch_size
    images per forward pass (and per request), and a batch's wait for others of at most
    max_queue_delay_microseconds (taken only when it pays, see serve/batch_policy.py)."""
    return pb.ModelConfigResponse(
        config=mc.ModelConfig(
            name=model.name,
            platform="pytorch",
            backend="raysight",
            max_batch_size=settings.max_batch_size,
            # With max_batch_size > 0, dims leave out the batch dimension.
            input=[
                mc.ModelInput(
                    name=INPUT_NAME,
                    data_type=_CONFIG_TYPES[settings.input_datatype],
                    format=mc.ModelInput.FORMAT_NCHW,
                    dims=list(model.input_shape),
                )
            ],
            # label_filename tells clients the output has class labels, as Triton's config
            # does; the file is not served over gRPC (Triton's clients only read the name):
            # the labels come back in classification results.
            output=[
                mc.ModelOutput(
                    name=name,
                    data_type=mc.TYPE_FP32,
                    dims=[model.num_classes],
                    label_filename=LABEL_FILENAME,
                )
                for name in settings.served_outputs
            ],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=(
                    [settings.preferred_batch_size] if settings.preferred_batch_size else []
                ),
                max_queue_delay_microseconds=int(settings.batch_wait_timeout_s * 1e6),
            ),
        )
    )


def repository_index(model: ServedModel | None) -> pb.RepositoryIndexResponse:
    """The one model this server serves, once it is loaded."""
    if model is None:
        return pb.RepositoryIndexResponse()
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=model.name, version=model.version, state="READY"
            )
        ]
    )


def is_heavy(request: pb.ModelInferRequest) -> bool:
    """Whether preparing the request is worth a worker thread (see serve/offload.py).

    Read from the message without decoding it: typed contents over INLINE_BYTES (by the
    shapes the request declares; one that lies only moves a quick refusal to a thread),
    encoded images over INLINE_BYTES, or UINT8 pixels over INLINE_PIXEL_BYTES. Raw FP32 is
    a view of the request's bytes: never.
    """
    raw = request.raw_input_contents
    typed = pixels = encoded = 0
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype in _ENCODED_DATATYPES:
            encoded += (
                (len(raw[i]) if i < len(raw) else 0)
                if raw
                else sum(len(item) for item in tensor.contents.bytes_contents)
            )
            continue
        if raw:
            size = len(raw[i]) if i < len(raw) else 0
        else:
            dtype = DATATYPES.get(tensor.datatype)
            size = math.prod(max(0, d) for d in tensor.shape) * (dtype.itemsize if dtype else 0)
            typed += size
        if tensor.datatype == "UINT8":
            pixels += size
    return typed > INLINE_BYTES or encoded > INLINE_BYTES or pixels > INLINE_PIXEL_BYTES


def model_inputs(
    request: pb.ModelInferRequest, model: ServedModel, settings: ServeSettings
) -> np.ndarray:
    """The request's one input as a normalised (B, C, H, W) float32 batch.

    FP32 is taken as normalised already; UINT8 pixels are normalised here with the
    checkpoint's preprocessing; BYTES images are decoded, resized and normalised as the
    image API does each one.

    Raises:
        InputError: If the request is malformed, names other inputs, or its input has the
            wrong shape or datatype, or one of its images cannot be decoded (the message
            names which).
    """
    spec = oip.InputSpec(model.input_shape, _INPUT_DATATYPES, _ENCODED_DATATYPES)
    tensors = oip.decode_inputs(
        request, max_batch_size=settings.max_batch_size, specs={INPUT_NAME: spec}
    )
    tensor = tensors[INPUT_NAME]  # (B, C, H, W) FP32 or UINT8, or (B,) encoded images
    if tensor.dtype == object:
        return model.engine.normalize(_decode_images(tensor, model, settings))
    if tensor.dtype == np.uint8:
        return model.engine.normalize(tensor)
    return np.ascontiguousarray(tensor, dtype=np.float32)


def _file(item: bytes) -> bytes:
    """An item's image file: as sent, or decoded when the item is base64 text of one.

    JSON carries a file only as text, so REST clients send base64 (as KServe's examples
    do). The base64 text of an image does not begin as any image file does (a PNG's as
    "iVBOR", a JPEG's as "/9j/"), so a file is never read as text nor text as a file.
    """
    if imaging.sniff_format(item) is not None:
        return item
    try:
        decoded = base64.b64decode(b"".join(item.split()), validate=True)
    except (binascii.Error, ValueError):
        return item
    return decoded if imaging.sniff_format(decoded) is not None else item


def _decode_images(files: np.ndarray, model: ServedModel, settings: ServeSettings) -> np.ndarray:
    """(B,) encoded image files -> (B, C, H, W) uint8 pixels at the model's size."""
    channels, height, width = model.input_shape
    pixels = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, data in enumerate(files):
        try:
            pixels[i] = decode_image(
                _file(data), size=(height, width), channels=channels, limits=settings.image_limits
            )
        except InputError as exc:
            raise InputError(f'inputs "{INPUT_NAME}" item {i}: {exc}', reason=exc.reason) from exc
    return pixels


def requested_outputs(
    request: pb.ModelInferRequest, model: ServedModel, settings: ServeSettings
) -> dict[str, int]:
    """What the request asks for, checked before its pass: output name -> class count.

    A count of 0 asks for the output's [B, K] values, k > 0 for its k best classes (Triton's
    classification extension). A request that names no output gets every served one; one
    that names an output twice gets it once.

    Raises:
        InputError: If the request names an output not served, or a bad class count.
    """
    served = settings.served_outputs
    if not request.outputs:
        return dict.fromkeys(served, 0)
    wanted: dict[str, int] = {}
    for i, output in enumerate(request.outputs):
        where = f'outputs[{i}] "{output.name}"'
        if output.name not in served:
            raise InputError(
                f"{where}: no such output; this model serves {', '.join(served)}",
                reason="bad_output_name",
            )
        count = classification.class_count(output, where, model.num_classes)
        wanted.setdefault(output.name, count)
    return wanted


def infer_response(
    request: pb.ModelInferRequest,
    model: ServedModel,
    wanted: dict[str, int],
    outputs: dict[str, np.ndarray],
) -> pb.ModelInferResponse:
    """The outputs `requested_outputs` chose, in its order, as raw contents: each (B, K)
    FP32, or (B, k) BYTES "score:index:label" where a class count was asked for."""
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request.id
    )
    labels = model.engine.class_names
    tensors = {
        name: classification.classification_tensor(outputs[name], k, labels) if k else outputs[name]
        for name, k in wanted.items()
    }
    oip.encode_outputs(response, tensors)
    return response


def stream_failure(request: pb.ModelInferRequest, status: Status) -> pb.ModelStreamInferResponse:
    """A failed stream request's answer: the error, and the request's id (as Triton does) so
    that a client can tell which request failed."""
    return pb.ModelStreamInferResponse(
        error_message=status.details,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
