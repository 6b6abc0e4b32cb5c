"""Channel masks over *coupled groups*, removable in place while training goes on.

The core behind ``GradualPruneCallback(granularity='channel', shrink=...)``; works on a plain
``paddle.nn.Layer``::

    gm = GroupMasker(net, criterion="l1", example_input=x[:1])
    gm.update(0.3)          # mask 30% of the channels of every prunable coupled group
    ... loss.backward(); opt.step(); gm.apply() ...      # hold the masks after each update
    result = gm.shrink(opt)  # remove the masked channels; optimizer accumulators are sliced

Why groups. Per-layer channel masks (:class:`~.masks.Masker` with ``granularity='channel'``) pick each
conv's weakest filters on its own; in a residual network the convs feeding one add then mask
*different* channels, so no channel is dead everywhere and nothing can be removed. Here the channels
are chosen per :class:`~.depgraph.ChannelGroup` of the traced :class:`~.depgraph.DependencyGraph`, with
an importance aggregated over every member (:func:`~.shrink.group_importance`), exactly as
:func:`~.shrink.prune_channels` chooses them.

Exactness. A masked channel is zeroed in *every* member Parameter along the member's axis: producer
filters and biases, BatchNorm scale and shift, depthwise filters, and the consumers' input slices (a
Linear after a flatten included). Consumers never see a masked channel, whatever the activations do
to a zero (sigmoid(0) = 0.5), so the masked network computes what the shrunk one computes, and
:meth:`GroupMasker.shrink` changes no output. BatchNorm running statistics are buffers and are left
alone (the channel's scale and shift are zero).

Ratios are fractions in [0, 1) of a group's *original* channels (before any shrink), so a schedule
can shrink step by step: after :meth:`shrink` the graph is traced again and the next
:meth:`update` removes only what is still missing. Channels masked before stay masked while the ratio
does not fall.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import paddle
from paddle import nn

from .depgraph import ChannelGroup, DependencyGraph, build_dependency_graph
from .masks import SparsityReport, check_sparsity, count_sparsity, select_targets
from .shrink import (
    ShrinkResult,
    _candidate_groups,
    _keep_count,
    _layer_plan,
    _refuse_blocked,
    apply_plan,
    check_criterion_and_rounding,
    group_importance,
    plan_from_kept,
    slice_optimizer_state,
)

__all__ = ["GroupMasker", "group_key"]


def group_key(group: ChannelGroup) -> str:
    """A name for ``group`` that survives shrinking and re-tracing: its layers, comma-separated."""
    return ",".join(group.layer_names())


class GroupMasker:
    """Masks whole coupled channel groups of ``net``; :meth:`shrink` removes them physically.

    Args:
        net: channels-first dygraph network (see :mod:`.depgraph` for what the tracer understands).
        criterion: 'l1', 'l2', 'fpgm' or 'bn_scale' (see :func:`~.shrink.group_importance`).
        round_to: kept channel counts are rounded up to a multiple of this (e.g. 8 for SIMD widths).
        ignored_layers: layer names whose coupled groups stay whole.
        keep_residual: leave residual streams whole (see :func:`~.shrink.prune_channels`).
        keep_outputs: ``{layer name: why}``: layers whose output channels something outside the network
            reads (a distillation tap with an adapter); their groups stay whole.
        example_input: tensor (or tuple) to trace with; None leaves :attr:`needs_trace` True until
            :meth:`trace` is called (e.g. with the first training batch).

    Attributes:
        sparsity: the current ratio (fraction of each prunable group's original channels removed).
        kept: {group index: kept channel indices} for groups with masked channels.
        masks: {parameter name: 0/1 mask tensor} for every parameter touched by a masked channel.
        original_sizes: {:func:`group_key`: channels before any shrink}.
    """

    def __init__(
        self,
        net: nn.Layer,
        *,
        criterion: str = "l1",
        round_to: int = 1,
        ignored_layers: Sequence[str] = (),
        keep_residual: bool = False,
        keep_outputs: Mapping[str, str] | Sequence[str] = (),
        example_input: Any = None,
    ) -> None:
        check_criterion_and_rounding(criterion, round_to)
        self.net = net
        self.criterion = criterion
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers)
        self.keep_residual = keep_residual
        self.keep_outputs = (dict(keep_outputs) if isinstance(keep_outputs, Mapping)
                             else {name: "kept whole on request" for name in keep_outputs})
        known = {name for name, _ in net.named_sublayers()}
        unknown = sorted((set(self.ignored_layers) | set(self.keep_outputs)) - known)
        if unknown:
            raise ValueError(f"layers {unknown} are not sublayers of {type(net).__name__}; "
                             f"valid names include: {', '.join(sorted(known)[:20])}")
        self.targets = select_targets(net)  # Conv/Linear weights, for sparsity reports
        self.graph: DependencyGraph | None = None
        self.example_input: tuple | None = None
        self.sparsity = 0.0
        self.kept: dict[int, np.ndarray] = {}
        self.masks: dict[str, paddle.Tensor] = {}
        self.original_sizes: dict[str, int] = {}
        self._params: dict[str, paddle.Tensor] = {}
        self._candidates: list[ChannelGroup] = []
        self._pending: dict[str, Any] | None = None
        if example_input is not None:
            self.trace(example_input)

    # ---- tracing --------------------------------------------------------------------------------
    @property
    def needs_trace(self) -> bool:
        """True until :meth:`trace` has built the dependency graph."""
        return self.graph is None

    def trace(self, example_input: Any) -> DependencyGraph:
        """Trace the channel couplings with ``example_input`` (kept, batch of one, for later re-traces).

        Raises UnsupportedPatternError when a prunable group touches an op the tracer cannot prune.
        """
        inputs = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
        inputs = tuple(t[:1].detach().clone() if isinstance(t, paddle.Tensor) else t for t in inputs)
        graph = build_dependency_graph(self.net, inputs)
        protected: set[int] = set()
        for name, why in self.keep_outputs.items():
            try:
                protected |= {g.index for g in graph.output_groups(name)}
            except KeyError as err:
                raise ValueError(f"{why}: {err.args[0]}") from None
        candidates = [g for g in _candidate_groups(graph, set(self.ignored_layers), self.keep_residual)
                      if g.index not in protected]
        _refuse_blocked(graph, candidates)
        if not candidates:
            raise ValueError(f"{type(self.net).__name__} has no prunable channel group "
                             f"(ignored_layers={self.ignored_layers}, kept outputs={list(self.keep_outputs)}):\n{graph}")
        self.graph, self.example_input, self._candidates = graph, inputs, candidates
        for g in candidates:
            self.original_sizes.setdefault(group_key(g), g.size)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.set_state_dict(pending)
        return graph

    # ---- masks ------------------------------------------------------------------------------------
    def at_level(self, sparsity: float) -> bool:
        """True when the network already holds ``sparsity`` (masked or removed)."""
        return self.graph is not None and abs(sparsity - self.sparsity) < 1e-12

    def compute_kept(self, sparsity: float) -> dict[int, np.ndarray]:
        """{group index: kept channels} for ratio ``sparsity`` of each group's original channels."""
        sparsity = check_sparsity(sparsity, "sparsity")
        if self.graph is None:
            raise RuntimeError("GroupMasker.trace(example_input) (or example_input=) must come first")
        keep_old = sparsity >= self.sparsity
        kept: dict[int, np.ndarray] = {}
        for g in self._candidates:
            n_keep = min(g.size, _keep_count(self.original_sizes[group_key(g)], sparsity, self.round_to))
            prev = self.kept.get(g.index) if keep_old else None
            if prev is not None:
                n_keep = min(n_keep, len(prev))
            if n_keep >= g.size:
                continue
            scores = group_importance(self.graph, g, self.criterion).astype("float64")
            if prev is not None:
                scores[np.setdiff1d(np.arange(g.size), prev)] = -np.inf  # masked before: stays masked
            kept[g.index] = np.sort(np.argsort(-scores, kind="stable")[:n_keep]).astype("int64")
        return kept

    def update(self, sparsity: float) -> None:
        """Mask ratio ``sparsity`` in [0, 1) of every prunable group's original channels, now."""
        self.set_kept(self.compute_kept(sparsity))
        self.sparsity = float(sparsity)

    def set_kept(self, kept: Mapping[int, Sequence[int]]) -> None:
        """Install masks keeping ``kept[group index]`` channels (other groups whole) and apply them."""
        assert self.graph is not None
        plan = plan_from_kept(self.graph, kept)  # validates indices and refuses blocked groups
        names = {id(p): n for n, p in self.net.named_parameters()}
        self.kept = dict(plan.kept)
        self.masks.clear()
        self._params.clear()
        for layer, params, _ in _layer_plan(self.graph, self.kept):
            for attr, axes in params.items():
                p = getattr(layer, attr, None)
                if attr.startswith("_") or not isinstance(p, paddle.Tensor) or id(p) not in names:
                    continue  # BN running statistics are buffers: left alone
                mask = np.ones(p.shape, dtype="float32")
                for axis, idx in axes.items():
                    if len(idx) < p.shape[axis]:
                        dead = np.setdiff1d(np.arange(p.shape[axis]), idx)
                        index = [slice(None)] * p.ndim
                        index[axis] = dead
                        mask[tuple(index)] = 0.0
                if mask.all():
                    continue
                self.masks[names[id(p)]] = paddle.to_tensor(mask, dtype=p.dtype)
                self._params[names[id(p)]] = p
        self.apply()

    def apply(self) -> None:
        """Multiply every touched parameter by its mask in place (call after each optimizer update)."""
        with paddle.no_grad():
            for name, mask in self.masks.items():
                self._params[name].multiply_(mask)

    def sparsity_report(self) -> SparsityReport:
        """Exact zeros of the Conv/Linear weights and of the whole network, from the current weights."""
        return count_sparsity(self.net, self.targets)

    def refresh_targets(self) -> None:
        """Re-read the Conv/Linear weights reported on (after a shrink, or parameters replaced by the seam)."""
        self.targets = select_targets(self.net)

    # ---- removing ---------------------------------------------------------------------------------
    def strip(self) -> SparsityReport:
        """Apply the masks a last time and forget them (zeros stay; :attr:`kept` stays for :meth:`shrink`)."""
        self.apply()
        self.masks.clear()
        self._params.clear()
        return self.sparsity_report()

    def shrink(self, optimizer: paddle.optimizer.Optimizer | None = None) -> ShrinkResult:
        """Remove the masked channels in place; slice ``optimizer``'s accumulators; re-trace.

        Parameter objects keep their identity (see :mod:`.shrink`). Outputs do not change: the removed
        channels were masked everywhere they were read.
        """
        assert self.graph is not None and self.example_input is not None
        self.apply()
        result = apply_plan(plan_from_kept(self.graph, self.kept, self.criterion), self.example_input)
        if optimizer is not None:
            slice_optimizer_state(optimizer, result.slices)
        self.kept = {}
        self.masks.clear()
        self._params.clear()
        self.refresh_targets()
        self.trace(self.example_input)
        return result

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Ratio, kept channels and original sizes, keyed by :func:`group_key` (index-free)."""
        groups = self.graph.groups if self.graph is not None else []
        return {
            "granularity": "channel_group",
            "sparsity": self.sparsity,
            "kept": {group_key(groups[i]): [int(c) for c in idx] for i, idx in self.kept.items()},
            "original_sizes": dict(self.original_sizes),
        }

    def set_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; before :meth:`trace` it waits and is applied by the trace."""
        if state.get("granularity") != "channel_group":
            raise ValueError(f"not a channel-group pruning state (granularity {state.get('granularity')!r}); the "
                             f"checkpoint was written by a different pruning set-up")
        if self.graph is None:
            self._pending = dict(state)
            return
        self.original_sizes.update({k: int(v) for k, v in state.get("original_sizes", {}).items()})
        by_key = {group_key(g): g.index for g in self._candidates}
        kept = {}
        for key, idx in state.get("kept", {}).items():
            if key not in by_key:
                raise ValueError(f"checkpoint masks channel group [{key}], which is not a prunable group of this "
                                 f"network; prunable groups: {sorted(by_key)[:10]}")
            kept[by_key[key]] = idx
        self.set_kept(kept)
        self.sparsity = float(state.get("sparsity", 0.0))
