"""Model-quality signals of a batch: how sure the model is, and which classes it predicts.

Pure numpy, so the deployment records them for every forward pass at the cost of one pass
over the batch's logits, and tests check them on real numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchQuality:
    """The top-1 prediction of every row of a batch, summarised for the metrics.

    Attributes:
        confidences: (N,) float64 top-1 softmax probability of each row, in [1/K, 1];
            0.0 for a row whose logits are not all finite.
        counts: Predicted class name -> rows predicted as it; classes no row predicted
            are absent, so the counts sum to N.
    """

    confidences: np.ndarray
    counts: dict[str, int]


def top1_quality(logits: np.ndarray, class_names: Sequence[str]) -> BatchQuality:
    """Top-1 class and softmax probability of each row of a batch.

    The top-1 probability is 1 / sum_k exp(z_k - max_k z_k): the softmax at the argmax,
    without forming the other K - 1 probabilities, and stable for large logits.

    Args:
        logits: (N, K) logits of a forward pass.
        class_names: K names, the checkpoint's labels in logit order.

    Returns:
        The rows' confidences and the rows predicted per class name.

    Raises:
        ValueError: If `logits` is not (N, K) with K = len(class_names).
    """
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(f"logits must be (N, {len(class_names)}), got {logits.shape}")
    scores = logits.astype(np.float64)  # (N, K); float64 so a sharp softmax does not round to 1
    top = scores.argmax(axis=1)  # (N,)
    # A row with a NaN or infinite logit has no meaningful confidence: count it as 0, the
    # lowest bucket, rather than let one NaN make the histogram's sum NaN for good.
    with np.errstate(invalid="ignore"):  # inf - inf in such a row
        shifted = scores - scores[np.arange(len(scores)), top][:, None]  # (N, K), 0 at top
        confidences = np.nan_to_num(1.0 / np.exp(shifted).sum(axis=1), nan=0.0)  # (N,)
    per_class = np.bincount(top, minlength=len(class_names))  # (K,)
    counts = {class_names[k]: int(per_class[k]) for k in np.flatnonzero(per_class).tolist()}
    return BatchQuality(confidences=confidences, counts=counts)
