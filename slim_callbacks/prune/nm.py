"""N:M semi-structured sparsity: at most N nonzeros in every group of M consecutive input weights.

Groups run along the *input* dimension (a conv's input channels at each output channel and kernel
position; a Linear's input features at each output), which is the layout sparse tensor cores
(2:4) expect. Paddle 3.3.1 has no CPU kernel that exploits it: an N:M model runs at dense speed on CPU
and gains only on hardware with such kernels, or on disk once zipped.

Gradual N:M: a target sparsity ``s`` in [0, (M-N)/M] turns the fraction ``s / ((M-N)/M)`` of the groups
into N:M groups, those that lose the least magnitude first; at ``s = (M-N)/M`` every group is N:M.
"""

from __future__ import annotations

import numpy as np

from .criteria import nm_group_view

__all__ = ["check_nm_args", "check_nm_shape", "is_nm_sparse", "nm_groups_pruned", "nm_mask", "nm_max_sparsity"]


def nm_max_sparsity(n: int, m: int) -> float:
    """The sparsity of a fully N:M weight: ``(m - n) / m``."""
    return (m - n) / m


def check_nm_args(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int)) or m < 2 or not 0 < n < m:
        raise ValueError(f"N:M sparsity needs whole numbers 0 < n < m and m >= 2 (e.g. n=2, m=4), got n={n!r}, m={m!r}")


def check_nm_shape(name: str, shape: list[int] | tuple[int, ...], in_axis: int | None, m: int) -> None:
    """Raise a ValueError naming ``name`` unless its input dimension is a multiple of ``m``."""
    if in_axis is None or len(shape) < 2:
        raise ValueError(f"N:M sparsity needs a weight with an input dimension; {name!r} has shape {list(shape)}")
    size = int(shape[in_axis])
    if size % m:
        raise ValueError(
            f"N:M sparsity with m={m}: the input dimension of {name!r} (axis {in_axis} of shape {list(shape)}) "
            f"is {size}, not divisible by {m}; exclude the layer (params regex / skip_first) or pick an m dividing {size}"
        )


def nm_mask(
    weight: np.ndarray,
    n: int,
    m: int,
    in_axis: int,
    fraction: float = 1.0,
    keep_groups: np.ndarray | None = None,
) -> np.ndarray:
    """A 0/1 float32 mask of ``weight``'s shape that makes ``fraction`` of the M-groups N:M.

    Args:
        weight: the weight (its input dimension must be divisible by ``m``).
        n, m: keep the ``n`` largest-magnitude entries of each group of ``m``.
        in_axis: the input dimension of ``weight``.
        fraction: share of the groups made N:M, in [0, 1]; the groups whose dropped entries have the
            smallest magnitude go first.
        keep_groups: optional boolean [G] of groups that must be N:M already (gradual pruning keeps
            earlier choices); they count toward ``fraction``.
    """
    check_nm_args(n, m)
    groups, inverse = nm_group_view(np.abs(weight), in_axis, m)
    order = np.argsort(-groups, axis=1, kind="stable")  # largest first
    group_mask = np.zeros_like(groups, dtype=np.float32)
    np.put_along_axis(group_mask, order[:, :n], 1.0, axis=1)
    lost = (groups * (1.0 - group_mask)).sum(axis=1).astype(np.float64)
    total_groups = groups.shape[0]
    k = int(round(min(max(fraction, 0.0), 1.0) * total_groups))
    if k >= total_groups:
        chosen = np.ones(total_groups, dtype=bool)
    else:
        if keep_groups is not None:
            lost = np.where(keep_groups, -np.inf, lost)
        chosen = np.zeros(total_groups, dtype=bool)
        if k > 0:
            chosen[np.argpartition(lost, k - 1)[:k]] = True
    full = np.where(chosen[:, None], group_mask, 1.0).astype(np.float32)
    return inverse(full)


def nm_groups_pruned(mask: np.ndarray, in_axis: int, m: int) -> np.ndarray:
    """Boolean [G]: which M-groups of ``mask`` already have zeros (used to keep gradual choices)."""
    groups, _ = nm_group_view(mask, in_axis, m)
    return (groups == 0).any(axis=1)


def is_nm_sparse(weight: np.ndarray, n: int, m: int, in_axis: int) -> bool:
    """True when every group of ``m`` consecutive input entries holds at most ``n`` nonzeros."""
    if weight.shape[in_axis] % m:
        return False
    groups, _ = nm_group_view(weight, in_axis, m)
    return bool(((groups != 0).sum(axis=1) <= n).all())
