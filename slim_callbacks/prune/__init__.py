"""Pruning: masks that hold, on a schedule (see docs/pruning.md).

The pure core works on a plain ``paddle.nn.Layer``: :class:`Masker` (select parameters, compute masks
for a sparsity, apply/hold/strip them, count sparsity from the weights), :func:`prune` (one shot),
:func:`sensitivity` and :func:`ratios_for_target` (sensitivity, then prune). The thin hapi callback is
:class:`GradualPruneCallback`.
"""

from .callback import GradualPruneCallback
from .criteria import CHANNEL_CRITERIA, channel_scores, magnitude_scores
from .masks import (
    GRANULARITIES,
    Masker,
    SparsityReport,
    Target,
    check_sparsity,
    prune,
    select_targets,
    trace_norm_pairs,
)
from .nm import is_nm_sparse, nm_mask
from .sensitivity import SensitivityResult, ratios_for_target, sensitivity

__all__ = [
    "CHANNEL_CRITERIA",
    "GRANULARITIES",
    "GradualPruneCallback",
    "Masker",
    "SensitivityResult",
    "SparsityReport",
    "Target",
    "channel_scores",
    "check_sparsity",
    "is_nm_sparse",
    "magnitude_scores",
    "nm_mask",
    "prune",
    "ratios_for_target",
    "select_targets",
    "sensitivity",
    "trace_norm_pairs",
]
