"""Class weights from the training masks' pixel counts (``train.class_weights``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

METHODS = ("median_frequency", "inverse_frequency")


def class_frequency_weights(
    counts: Sequence[int], image_counts: Sequence[int] | None = None, method: str = "median_frequency"
) -> list[float]:
    """Class weights from pixel counts.

    - ``median_frequency`` (Eigen & Fergus 2015, SegNet): ``freq_c = n_c / (pixels of the images
      where c occurs)``, ``w_c = median(freq) / freq_c``; needs ``image_counts`` (those pixel totals).
    - ``inverse_frequency``: ``w_c = n / (C * n_c)``, 1 on average over pixels.
    A class with no pixel gets weight 0."""
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    weights = np.zeros_like(n)
    if method == "median_frequency":
        if image_counts is None:
            raise ValueError("median_frequency needs image_counts")
        freq = n[present] / np.asarray(image_counts, dtype=np.float64)[present]
        weights[present] = np.median(freq) / freq
    elif method == "inverse_frequency":
        weights[present] = n.sum() / (present.sum() * n[present])
    else:
        raise ConfigError(f"class weights {method!r}; valid: {', '.join(METHODS)}, or a list")
    return weights.tolist()
