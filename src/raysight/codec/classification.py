"""Triton's classification extension: a requested output's top-k classes as strings.

An output requested with the parameter `classification` = k (tritonclient's
`InferRequestedOutput(name, class_count=k)`) comes back as a BYTES tensor [B, k] instead of
its [B, K] values: per row the k highest scores, best first, each "score:index:label" with
the score printed as Triton prints it (C's %f, e.g. "0.998314:3:3"). Ties keep the lower
class index first, the order the image API's Classify ranks by too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from raysight.errors import InputError

if TYPE_CHECKING:
    from raysight._proto.inference.grpc_service_pb2 import ModelInferRequest

    _Requested = ModelInferRequest.InferRequestedOutputTensor

PARAMETER = "classification"
# Both integer kinds of InferParameter mean a count; tritonclient sends int64_param.
_INTEGER_KINDS = ("int64_param", "uint64_param")


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best classes of each row, best first; ties keep the lower index first.

    Args:
        scores: (B, K) logits or probabilities.
        k: How many classes per row, 1..K.

    Returns:
        (B, k) class indices.
    """
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def classification_tensor(scores: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """The k best classes of each row as Triton's "score:index:label" strings.

    Args:
        scores: (B, K) logits or probabilities.
        k: How many classes per row, 1..K.
        labels: The K class names.

    Returns:
        (B, k) object array of UTF-8 `bytes`, a BYTES tensor.
    """
    best = top_classes(scores, k)  # (B, k)
    strings = np.empty(best.shape, dtype=object)
    for row, classes in enumerate(best):
        for j, index in enumerate(classes):
            strings[row, j] = f"{float(scores[row, index]):f}:{index}:{labels[index]}".encode()
    return strings


def class_count(output: _Requested, where: str, num_classes: int) -> int:
    """The k a requested output's `classification` parameter asks for, or 0 without one.

    Args:
        output: The requested output.
        where: The output, for messages, e.g. 'outputs[0] "probabilities"'.
        num_classes: K, the most k may be.

    Raises:
        InputError: If the parameter is not an integer, or k is not in 1..K.
    """
    if PARAMETER not in output.parameters:
        return 0
    parameter = output.parameters[PARAMETER]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in _INTEGER_KINDS:
        raise InputError(
            f"{where}: parameter {PARAMETER} must be an integer (int64_param), the number of "
            f"classes to return; got {kind or 'no value'}",
            reason="bad_class_count",
        )
    k = int(getattr(parameter, kind))
    if not 1 <= k <= num_classes:
        raise InputError(
            f"{where}: parameter {PARAMETER} asks for {k} classes; the model has "
            f"{num_classes}, so use 1 to {num_classes}",
            reason="bad_class_count",
        )
    return k
