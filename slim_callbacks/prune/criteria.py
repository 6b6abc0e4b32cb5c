"""Importance scores: which weights or channels matter least.

Every function here is pure numpy on one weight array (plus, for ``bn_scale``, the following norm
layer's scale). A larger score means *more important*; pruning removes the lowest scores.

Channel criteria score each *output* channel (a conv filter, a Linear output column):

* ``l1``: sum of absolute values of the filter (Li et al. 2017, PaddleSlim's L1NormFilterPruner).
* ``l2``: Euclidean norm of the filter.
* ``fpgm``: distance of the filter to the geometric median of all filters of the layer (He et al.
  2019): filters close to the median are replaceable by the others, so they score low. The sum of
  Euclidean distances to all other filters is the usual approximation of that distance.
* ``bn_scale``: ``|gamma|`` of the BatchNorm that consumes the layer's output (Liu et al. 2017,
  network slimming). The pairing conv -> BN is found by tracing a forward pass (see
  :func:`slim_callbacks.prune.masks.trace_norm_pairs`), never by name matching.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "CHANNEL_CRITERIA",
    "channel_scores",
    "magnitude_scores",
    "nm_group_view",
]


def magnitude_scores(weight: np.ndarray) -> np.ndarray:
    """Unstructured importance: ``|w|`` elementwise (same shape as ``weight``)."""
    return np.abs(weight)


def _filters(weight: np.ndarray, out_axis: int) -> np.ndarray:
    """``weight`` as a 2-D array [output channels, everything else]."""
    return np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)


def l1_scores(weight: np.ndarray, out_axis: int) -> np.ndarray:
    return np.abs(_filters(weight, out_axis)).sum(axis=1)


def l2_scores(weight: np.ndarray, out_axis: int) -> np.ndarray:
    return np.sqrt((_filters(weight, out_axis).astype(np.float64) ** 2).sum(axis=1))


def fpgm_scores(weight: np.ndarray, out_axis: int) -> np.ndarray:
    """Sum of Euclidean distances from each filter to all others (small = near the geometric median)."""
    filters = _filters(weight, out_axis).astype(np.float64)
    sq = (filters**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * filters @ filters.T, 0.0)
    return np.sqrt(d2).sum(axis=1)


CHANNEL_CRITERIA: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "l1": l1_scores,
    "l2": l2_scores,
    "fpgm": fpgm_scores,
}
"""Channel criteria computed from the weight alone; ``'bn_scale'`` is handled by the Masker."""


def channel_scores(criterion: str, weight: np.ndarray, out_axis: int, bn_scale: np.ndarray | None = None) -> np.ndarray:
    """One score per output channel (length ``weight.shape[out_axis]``).

    Args:
        criterion: ``'l1'``, ``'l2'``, ``'fpgm'`` or ``'bn_scale'``.
        weight: the layer's weight.
        out_axis: the axis of output channels (0 for Conv, 1 for Linear's [in, out] weight).
        bn_scale: the following norm layer's scale (``gamma``), needed for ``'bn_scale'``.
    """
    if criterion == "bn_scale":
        if bn_scale is None:
            raise ValueError("criterion 'bn_scale' needs the scale of the norm layer that follows the layer")
        scores = np.abs(np.asarray(bn_scale, dtype=np.float64)).ravel()
        if scores.shape[0] != weight.shape[out_axis]:
            raise ValueError(
                f"bn_scale has {scores.shape[0]} channels but the weight has {weight.shape[out_axis]} outputs"
            )
        return scores
    if criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"unknown channel criterion {criterion!r}; valid: {sorted(CHANNEL_CRITERIA) + ['bn_scale']}")
    return CHANNEL_CRITERIA[criterion](weight, out_axis)


def nm_group_view(weight: np.ndarray, in_axis: int, m: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Groups of ``m`` consecutive input-dimension entries: returns (groups [G, m], inverse).

    ``inverse(groups_like)`` maps an array of shape [G, m] back to ``weight``'s shape, so a mask built
    per group lands on the right weights. The caller checks divisibility first.
    """
    moved = np.moveaxis(weight, in_axis, -1)
    moved_shape = moved.shape
    groups = moved.reshape(-1, m)

    def inverse(grouped: np.ndarray) -> np.ndarray:
        return np.moveaxis(grouped.reshape(moved_shape), -1, in_axis)

    return groups, inverse
