"""Physical channel pruning: remove channel groups from a dygraph network, in place.

Masks alone leave a model the same size and speed; this module deletes channels. It traces the
network's channel couplings (:mod:`.depgraph`), scores every coupled group with an importance
aggregated over *all* its members (every conv/Linear that produces or consumes the channels, not only
the first conv as PaddleSlim does), keeps the best channels, and slices every coupled Parameter and
buffer (Conv/Linear weights and biases, BN scale/shift and running mean/variance) consistently.

Parameters are shrunk **in place**: each ``Parameter`` object keeps its identity and name and only its
storage is replaced by the sliced values. So the network's ``state_dict`` keys, the optimizer's
parameter list, a ``paddle.Model`` holding the network and anything else holding the Parameter stay
valid ("re-pointing" the optimizer is a no-op by construction); only the optimizer's per-parameter
accumulators must be sliced, by :func:`slice_optimizer_state`. A ``paddle.DataParallel`` wrapper
built before shrinking has gradient buckets of the old sizes and must be rebuilt by the caller.

Units: ratios are fractions of a group's channels removed, in [0, 1); MACs are multiply-accumulates
of Conv and Linear layers per input image.

Saving: :func:`describe_architecture` gives a JSON-able spec of every layer's shapes,
:func:`apply_shrunk_architecture` rebuilds it on a fresh unpruned network before weights are
loaded, :func:`check_state_dict_shapes` turns a shape mismatch into an error naming layer and
shapes; :func:`save_shrunk` / :func:`load_shrunk` bundle the three. (One module rather than two: the
spec and the slicing share the same attribute bookkeeping.)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import paddle
from paddle import nn

from .depgraph import ChannelGroup, DependencyGraph, build_dependency_graph

__all__ = [
    "CRITERIA", "PruningPlan", "is_residual", "ShrinkResult", "ParamSlice", "UnsupportedPatternError",
    "group_importance", "plan_pruning", "plan_from_kept", "apply_plan", "shrink_network", "prune_channels",
    "slice_optimizer_state", "count_macs_per_image", "describe_architecture", "apply_shrunk_architecture",
    "check_state_dict_shapes", "save_shrunk", "load_shrunk",
]

CRITERIA = ("l1", "l2", "fpgm", "bn_scale")
_ARCH_FORMAT = "slim_callbacks.shrunk_architecture/1"
_ARCH_ATTRS = ("_in_channels", "_out_channels", "_groups", "_num_features")


class UnsupportedPatternError(ValueError):
    """Pruning was asked for channels the tracer cannot remove safely (names the op and layer)."""


# ---- importance ---------------------------------------------------------------------------------
def _member_rows(graph: DependencyGraph, member, size: int) -> np.ndarray | None:
    """[size, k] weights of one member, one row per group channel (None for BN members)."""
    rec = graph.layers[member.layer]
    w = rec.layer.weight.numpy()
    o, i, n = member.offset, member.inner, size
    if member.kind == "out":
        return w.reshape(w.shape[0], -1) if rec.kind == "conv" else w.T
    if member.kind == "depthwise":
        return w[o:o + n].reshape(n, -1)
    if member.kind == "in" and rec.kind == "conv":
        return np.moveaxis(w[:, o:o + n], 1, 0).reshape(n, -1)
    if member.kind == "in":  # Linear input features: channel c owns rows o + c*i .. o + c*i + i - 1
        return w[o:o + n * i].reshape(n, -1)
    return None


def _score_rows(rows: np.ndarray, criterion: str) -> np.ndarray:
    rows = rows.astype("float64")
    if criterion == "l1":
        return np.abs(rows).sum(1)
    if criterion == "l2":
        return np.sqrt((rows ** 2).sum(1))
    # FPGM (He et al. 2019): channels near the geometric median of the group are the most replaceable
    sq = (rows ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0))
    return dist.sum(1)


def group_importance(graph: DependencyGraph, group: ChannelGroup, criterion: str = "l1") -> np.ndarray:
    """Importance of each of ``group``'s channels (higher = keep), aggregated over all its members.

    'l1' / 'l2' / 'fpgm' score the channel's weights in every member conv/Linear (output filters,
    depthwise filters and the input slices of consumers); each member's scores are divided by their
    mean so that every layer gets an equal vote, then averaged. 'bn_scale' uses |gamma| of the
    group's BatchNorms the same way (network slimming); a group without BN falls back to 'l1'.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    votes = []
    if criterion == "bn_scale":
        for m in group.members:
            if m.kind == "norm":
                gamma = graph.layers[m.layer].layer.weight
                if gamma is not None:
                    g = np.abs(gamma.numpy().astype("float64")).reshape(-1)
                    votes.append(g[m.offset:m.offset + group.size * m.inner].reshape(group.size, -1).sum(1))
        if not votes:
            criterion = "l1"
    if not votes:
        for m in group.members:
            rows = _member_rows(graph, m, group.size)
            if rows is not None:
                votes.append(_score_rows(rows, criterion))
    if not votes:
        return np.zeros(group.size)
    return np.mean([v / (v.mean() + 1e-12) for v in votes], axis=0)


# ---- planning -------------------------------------------------------------------------------------
@dataclass
class PruningPlan:
    """Which channels survive: ``kept[group index]`` = sorted kept channel indices (others untouched)."""

    graph: DependencyGraph
    kept: dict[int, np.ndarray]
    ratios: dict[int, float]
    criterion: str
    dense_macs: int
    predicted_macs: int

    def predicted_parameters(self) -> int:
        """Number of parameter values (all Parameters, BN statistics included) after applying the plan."""
        total = sum(int(np.prod(p.shape)) for p in self.graph.network.parameters())
        for layer, params, _ in _layer_plan(self.graph, self.kept):
            for pname, kept in params.items():
                p = getattr(layer, pname, None)
                if p is not None:
                    new = [len(kept[a]) if a in kept else d for a, d in enumerate(p.shape)]
                    total += int(np.prod(new)) - int(np.prod(p.shape))
        return total

    @property
    def mac_reduction(self) -> float:
        return 1.0 - self.predicted_macs / self.dense_macs if self.dense_macs else 0.0

    def __str__(self) -> str:
        lines = [f"PruningPlan ({self.criterion}): MACs/image {self.dense_macs:,} -> {self.predicted_macs:,} "
                 f"(-{100 * self.mac_reduction:.1f}%)"]
        for gi, kept in self.kept.items():
            g = self.graph.groups[gi]
            lines.append(f"  group {gi}: {g.size} -> {len(kept)} ch ({', '.join(g.layer_names()[:4])}"
                         f"{', ...' if len(g.layer_names()) > 4 else ''})")
        return "\n".join(lines)


def plan_from_kept(graph: DependencyGraph, kept: Mapping[int, Sequence[int]], criterion: str = "given") -> PruningPlan:
    """A plan from explicit kept channels per group index (e.g. the unmasked channels of a masked net).

    Raises ValueError for an unknown/unprunable group or out-of-range / empty / duplicate indices.
    """
    clean: dict[int, np.ndarray] = {}
    for gi, idx in kept.items():
        if not isinstance(gi, int) or not 0 <= gi < len(graph.groups):
            raise ValueError(f"no group {gi!r}; groups are 0..{len(graph.groups) - 1}")
        group = graph.groups[gi]
        if not group.prunable:
            _refuse_blocked(graph, [group])
            raise ValueError(f"group {gi} ({', '.join(group.layer_names())}) is not prunable: {group.pinned}")
        arr = np.unique(np.asarray(idx, dtype="int64"))
        if len(arr) != len(idx) or len(arr) == 0 or arr[0] < 0 or arr[-1] >= group.size:
            raise ValueError(f"kept indices of group {gi} must be distinct, non-empty and in [0, {group.size})")
        if len(arr) < group.size:
            clean[gi] = arr
    _refuse_blocked(graph, [])  # hazards
    ratios = {gi: 1.0 - len(a) / graph.groups[gi].size for gi, a in clean.items()}
    return PruningPlan(graph, clean, ratios, criterion, graph.predict_macs(), graph.predict_macs(clean))


def _keep_count(size: int, ratio: float, round_to: int) -> int:
    keep = size - int(math.floor(ratio * size + 1e-9))
    keep = int(math.ceil(keep / round_to) * round_to)
    return max(1, min(size, keep))


def check_criterion_and_rounding(criterion: str, round_to: int) -> None:
    """ValueError for an unknown channel criterion or a ``round_to`` that is not an integer >= 1."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")


def _check_ratio(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def is_residual(group: ChannelGroup) -> bool:
    """True when several Conv/Linear outputs are added into ``group``'s channels (a residual stream)."""
    return sum(m.kind == "out" for m in group.members) > 1


def _candidate_groups(graph: DependencyGraph, ignored: set[str], keep_residual: bool = False) -> list[ChannelGroup]:
    """Groups with producers that are not pinned and not ignored (blocked ones included: they refuse later)."""
    out = []
    for g in graph.groups:
        names = {m.layer for m in g.members} | {loc.split(" ")[0] for loc, _ in g.blocked}
        if g.pinned or names & ignored or not any(m.kind in ("out", "depthwise") for m in g.members):
            continue
        if keep_residual and is_residual(g):
            continue
        out.append(g)
    return out


def _refuse_blocked(graph: DependencyGraph, groups: Sequence[ChannelGroup]) -> None:
    if graph.hazards:
        raise UnsupportedPatternError(
            "cannot prune channels: " + "; ".join(graph.hazards) +
            ". Use only leaf Layers and traced ops (+ - * /, add, multiply, concat, flatten, reshape, mean, "
            "squeeze, transpose, paddle.nn.functional activations/pools) on feature maps.")
    layer_names = {name for name, _ in graph.network.named_sublayers()}
    for g in groups:
        if g.blocked:
            loc, why = g.blocked[0]
            hint = loc.split(" ")[0] if loc.split(" ")[0] in layer_names else (g.layer_names() or ["?"])[0]
            raise UnsupportedPatternError(
                f"cannot prune the channels of {', '.join(g.layer_names()) or 'group ' + str(g.index)}: "
                f"{loc}: {why}. Pass ignored_layers=[{hint!r}] to leave these channels whole.")


def _resolve_ratios(graph: DependencyGraph, ratio: float | Mapping[str, float], ignored: set[str],
                    keep_residual: bool = False) -> dict[int, float]:
    candidates = _candidate_groups(graph, ignored, keep_residual)
    if not isinstance(ratio, Mapping):
        r = _check_ratio(ratio, "ratio")
        _refuse_blocked(graph, candidates if r > 0 else [])
        return {g.index: r for g in candidates}
    valid = {name: g for g in candidates for name in g.layer_names()}
    ratios: dict[int, float] = {}
    for name, value in ratio.items():
        r = _check_ratio(value, f"ratio[{name!r}]")
        if name not in valid:
            pinned = [g for g in graph.groups if name in g.layer_names() and g.pinned]
            why = f" ({pinned[0].pinned[0]}: never pruned)" if pinned else ""
            raise ValueError(f"ratio key {name!r} is not a prunable layer{why}; valid: {', '.join(sorted(valid))}")
        g = valid[name]
        if g.index in ratios and ratios[g.index] != r:
            raise ValueError(f"ratio[{name!r}] = {r} conflicts with {ratios[g.index]} for the same coupled group "
                             f"{g.layer_names()}")
        ratios[g.index] = r
    _refuse_blocked(graph, [graph.groups[i] for i, r in ratios.items() if r > 0])
    return ratios


def _counts_only(graph: DependencyGraph, ratios: Mapping[int, float], round_to: int) -> dict[int, np.ndarray]:
    return {i: np.arange(_keep_count(graph.groups[i].size, r, round_to)) for i, r in ratios.items()}


def plan_pruning(
    graph: DependencyGraph,
    ratio: float | Mapping[str, float] | None = None,
    *,
    target_mac_reduction: float | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    ignored_layers: Sequence[str] = (),
    keep_residual: bool = False,
) -> PruningPlan:
    """Choose the channels to keep. See :func:`prune_channels` for the arguments."""
    check_criterion_and_rounding(criterion, round_to)
    if (ratio is None) == (target_mac_reduction is None):
        raise ValueError("give exactly one of ratio (float or {layer name: ratio}) and target_mac_reduction")
    ignored = set(ignored_layers)
    known = {name for name, _ in graph.network.named_sublayers()}
    if ignored - known:
        raise ValueError(f"ignored_layers {sorted(ignored - known)} are not layers of the network; "
                         f"valid names include: {', '.join(sorted(graph.layers)[:20])}")
    dense = graph.predict_macs()
    if target_mac_reduction is not None:
        target = _check_ratio(target_mac_reduction, "target_mac_reduction")
        base = _resolve_ratios(graph, 0.0, ignored, keep_residual)
        _refuse_blocked(graph, [graph.groups[i] for i in base])

        def reduction(r: float) -> float:
            return 1.0 - graph.predict_macs(_counts_only(graph, {i: r for i in base}, round_to)) / dense

        hi = 0.99
        if reduction(hi) < target:
            raise ValueError(f"target_mac_reduction={target} is unreachable: pruning 99% of every prunable group "
                             f"removes only {100 * reduction(hi):.1f}% of MACs")
        lo = 0.0
        for _ in range(40):  # smallest uniform ratio whose predicted reduction reaches the target
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reduction(mid) >= target else (mid, hi)
        ratios = {i: hi for i in base}
    else:
        ratios = _resolve_ratios(graph, ratio, ignored, keep_residual)
    kept: dict[int, np.ndarray] = {}
    for i, r in ratios.items():
        group = graph.groups[i]
        n_keep = _keep_count(group.size, r, round_to)
        if n_keep < group.size:
            scores = group_importance(graph, group, criterion)
            kept[i] = np.sort(np.argsort(-scores, kind="stable")[:n_keep]).astype("int64")
    return PruningPlan(graph, kept, ratios, criterion, dense, graph.predict_macs(kept))


# ---- applying ---------------------------------------------------------------------------------------
@dataclass
class ParamSlice:
    """How one Parameter was cut: ``kept[axis]`` = surviving indices along that axis."""

    param: Any
    old_shape: list[int]
    kept: dict[int, np.ndarray]

    @property
    def new_shape(self) -> list[int]:
        return [len(self.kept[a]) if a in self.kept else d for a, d in enumerate(self.old_shape)]


@dataclass
class ShrinkResult:
    """What :func:`shrink_network` did: the network (same object), the plan and every parameter slice."""

    network: nn.Layer
    plan: PruningPlan
    slices: dict[str, ParamSlice] = field(default_factory=dict)  # by Parameter name (optimizer key)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0


def _place(t: paddle.Tensor) -> Any:
    p = t.place
    return paddle.CPUPlace() if p.is_cpu_place() else paddle.CUDAPlace(p.gpu_device_id())


def _set_storage(t: paddle.Tensor, value: np.ndarray) -> None:
    """Replace ``t``'s storage (any shape) keeping the Tensor/Parameter object and its name."""
    t.get_tensor().set(np.ascontiguousarray(value), _place(t))


def _slice_array(a: np.ndarray, kept: Mapping[int, np.ndarray]) -> np.ndarray:
    for axis, idx in kept.items():
        a = np.take(a, idx, axis=axis)
    return a


def _layer_plan(graph: DependencyGraph, kept: Mapping[int, np.ndarray]) -> list[tuple[nn.Layer, dict, dict]]:
    """[(layer, {param attr: {axis: idx}}, {layer attr: new value})] for every layer that changes."""
    out = []
    for rec in graph.layers.values():
        size = lambda a: graph._size[graph.find(a)]  # noqa: E731
        params: dict[str, dict[int, np.ndarray]] = {}
        attrs: dict[str, int] = {}
        if rec.kind in ("conv", "linear"):
            o = graph.kept_indices(((rec.out_atom, size(rec.out_atom), 1),), kept)
            i = graph.kept_indices(rec.in_desc, kept)
            o_ax, i_ax = (0, 1) if rec.kind == "conv" else (1, 0)
            params["weight"] = {o_ax: o, i_ax: i}
            params["bias"] = {0: o}
            if rec.kind == "conv":
                attrs = {"_out_channels": len(o), "_in_channels": len(i)}
        else:
            c = graph.kept_indices(rec.in_desc, kept)
            names = ("weight", "bias") if rec.kind == "depthwise" else ("weight", "bias", "_mean", "_variance")
            params = {n: {0: c} for n in names}
            attrs = ({"_out_channels": len(c), "_in_channels": len(c), "_groups": len(c)}
                     if rec.kind == "depthwise" else {"_num_features": len(c)})
        out.append((rec.layer, params, attrs))
    return out


def _output_shapes(network: nn.Layer, inputs: tuple) -> list[list[int]]:
    from .depgraph import _tensors
    flags = [(layer, layer.training) for layer in network.sublayers(include_self=True)]
    try:
        network.eval()
        with paddle.no_grad():
            return [list(t.shape) for t in _tensors(network(*inputs))]
    finally:
        for layer, training in flags:
            layer.training = training


def apply_plan(plan: PruningPlan, example_input: Any = None) -> ShrinkResult:
    """Slice every coupled Parameter/buffer of ``plan.graph.network`` in place and fix layer attributes.

    Afterwards the network runs on an example input (default: zeros of the traced shape) and must give
    the same output shapes; if it does not, every change is rolled back and RuntimeError is raised.
    """
    graph, net = plan.graph, plan.graph.network
    if example_input is None:
        shapes = [graph.input_shape] if isinstance(graph.input_shape[0], int) else graph.input_shape
        example_input = tuple(paddle.zeros(s, dtype="float32") for s in shapes)
    inputs = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
    before = _output_shapes(net, inputs)
    result = ShrinkResult(net, plan, macs_before=count_macs_per_image(net, inputs),
                          params_before=sum(int(np.prod(p.shape)) for p in net.parameters()))
    undo: list[tuple] = []
    try:
        for layer, params, attrs in _layer_plan(graph, plan.kept):
            for pname, kept in params.items():
                p = getattr(layer, pname, None)
                if p is None:
                    continue
                kept = {a: idx for a, idx in kept.items() if len(idx) < p.shape[a]}
                if not kept:
                    continue
                old = p.numpy()
                undo.append(("tensor", p, old))
                if p.grad is not None:
                    p.clear_gradient(False)
                _set_storage(p, _slice_array(old, kept))
                result.slices[p.name] = ParamSlice(p, list(old.shape), kept)
            for attr, value in attrs.items():
                if hasattr(layer, attr):
                    undo.append(("attr", layer, attr, getattr(layer, attr)))
                    setattr(layer, attr, value)
        after = _output_shapes(net, inputs)
        if after != before:
            raise RuntimeError(f"output shapes changed from {before} to {after}")
    except Exception as exc:
        for entry in reversed(undo):
            if entry[0] == "tensor":
                _set_storage(entry[1], entry[2])
            else:
                setattr(entry[1], entry[2], entry[3])
        raise RuntimeError(f"channel pruning of {type(net).__name__} failed and was rolled back: {exc}") from exc
    result.macs_after = count_macs_per_image(net, inputs)
    result.params_after = sum(int(np.prod(p.shape)) for p in net.parameters())
    return result


def shrink_network(
    network: nn.Layer,
    ratio: float | Mapping[str, float] | None = None,
    *,
    target_mac_reduction: float | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    example_input: Any = None,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    ignored_layers: Sequence[str] = (),
    keep_residual: bool = False,
    optimizer: paddle.optimizer.Optimizer | None = None,
) -> ShrinkResult:
    """:func:`prune_channels`, returning the full :class:`ShrinkResult` (plan, slices, MACs, params)."""
    graph = build_dependency_graph(network, example_input, input_shape)
    plan = plan_pruning(graph, ratio, target_mac_reduction=target_mac_reduction, criterion=criterion,
                        round_to=round_to, ignored_layers=ignored_layers, keep_residual=keep_residual)
    result = apply_plan(plan, example_input)
    if optimizer is not None:
        slice_optimizer_state(optimizer, result.slices)
    return result


def prune_channels(
    network: nn.Layer,
    ratio: float | Mapping[str, float] | None = None,
    *,
    target_mac_reduction: float | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    example_input: Any = None,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    ignored_layers: Sequence[str] = (),
    keep_residual: bool = False,
    optimizer: paddle.optimizer.Optimizer | None = None,
) -> nn.Layer:
    """Remove channels from ``network`` in place and return it (same object, same call signature).

    Args:
        network: channels-first dygraph network (Conv/BN/Linear/activations/pools, residual adds,
            concats, depthwise convs, flatten -> Linear).
        ratio: fraction in [0, 1) of channels removed from every prunable coupled group, or
            ``{layer name: ratio}`` for the groups holding those layers' output channels (others kept).
        target_mac_reduction: instead of ``ratio``: fraction in [0, 1) of Conv/Linear MACs per image to
            remove; the smallest uniform ratio reaching it is found by bisection on the exact MAC
            prediction (equal to the hook-counted MACs of the shrunk network).
        criterion: 'l1', 'l2', 'fpgm' or 'bn_scale' (see :func:`group_importance`).
        round_to: kept channel counts are rounded up to a multiple of this (e.g. 8 for SIMD widths).
        example_input / input_shape: what to trace with (default zeros of ``input_shape``).
        ignored_layers: layer names whose coupled groups stay whole (e.g. a grouped conv's neighbours).
        keep_residual: leave residual streams (groups that several Conv/Linear outputs are added into)
            whole and prune only the channels inside blocks; on CIFAR ResNet-20 at 50% of MACs this
            lost 0.75 points against 1.19 for pruning every group (docs/benchmarks_shrink.md).
        optimizer: if given, its accumulators (momentum velocity, Adam moments) are sliced to match.

    The final output (classifier logits) and the network input are never pruned.

    Raises:
        UnsupportedPatternError: a group to prune touches an unsupported op (names op and layer).
        ValueError: bad ratio/criterion/round_to/keys (the message lists valid values).
    """
    return shrink_network(network, ratio, target_mac_reduction=target_mac_reduction, criterion=criterion,
                          round_to=round_to, example_input=example_input, input_shape=input_shape,
                          ignored_layers=ignored_layers, keep_residual=keep_residual, optimizer=optimizer).network


# ---- optimizer ----------------------------------------------------------------------------------------
def _optimizer_params(optimizer: Any) -> list[Any]:
    params = []
    for item in getattr(optimizer, "_parameter_list", None) or []:
        params += item["params"] if isinstance(item, dict) else [item]
    return params


def slice_optimizer_state(optimizer: paddle.optimizer.Optimizer, slices: Mapping[str, ParamSlice]) -> int:
    """Slice ``optimizer``'s per-parameter state to the shrunk parameters; return how many tensors changed.

    Every accumulator (Momentum 'velocity', Adam/AdamW 'moment1'/'moment2', master weights ...) whose
    shape equals the parameter's old shape is cut with the same kept indices; scalar accumulators
    (Adam's beta powers) are left alone; loaded state still waiting for its accumulator (a resume before
    the first step) is cut the same way. The optimizer's parameter list already holds the shrunk
    Parameter objects (they were sliced in place); a sliced parameter the optimizer does not hold is
    an error, since it would silently stop training.
    """
    held = {p.name for p in _optimizer_params(optimizer)}
    missing = [n for n, s in slices.items() if n not in held and not s.param.stop_gradient]
    if held and missing:
        raise ValueError(f"optimizer does not hold the shrunk trainable parameters {missing[:5]}; pass the "
                         f"optimizer built on this network")
    changed = 0
    stores = list(getattr(optimizer, "_accumulators", {}).values()) + [getattr(optimizer, "_master_weights", {})]
    for store in stores:
        for pname, acc in store.items():
            s = slices.get(pname)
            if s is None or not isinstance(acc, paddle.Tensor):
                continue
            shape = list(acc.shape)
            if shape == s.old_shape and shape != s.new_shape:
                _set_storage(acc, _slice_array(acc.numpy(), s.kept))
                changed += 1
            elif shape != s.new_shape and int(np.prod(shape)) > 1:
                raise ValueError(f"optimizer state of {pname!r} has shape {shape}, neither the old {s.old_shape} "
                                 f"nor the new {s.new_shape} parameter shape")
    # state loaded by set_state_dict but not claimed yet (accumulators are created at the first step):
    # Paddle holds it by accumulator name, '<param name>_<accumulator>_<n>'
    holder = getattr(optimizer, "_accumulators_holder", None) or {}
    by_length = sorted(slices, key=len, reverse=True)
    for key, value in list(holder.items()):
        pname = next((n for n in by_length if key.startswith(n + "_")), None)
        if pname is None:
            continue
        s = slices[pname]
        if list(np.shape(value)) == s.old_shape != s.new_shape:
            cut = _slice_array(value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value), s.kept)
            holder[key] = paddle.to_tensor(cut) if isinstance(value, paddle.Tensor) else cut
            changed += 1
    return changed


# ---- MAC counting -------------------------------------------------------------------------------------
def count_macs_per_image(network: nn.Layer, example_input: Any = (1, 3, 32, 32)) -> int:
    """Conv and Linear multiply-accumulates per image, counted with forward hooks on one eval pass
    (QAT-wrapped convs and linears included).

    ``example_input``: a tensor, a tuple of tensors, or a batch-first shape (zeros are used).
    """
    if isinstance(example_input, (list, tuple)) and all(isinstance(d, int) for d in example_input):
        example_input = (paddle.zeros(list(example_input), dtype="float32"),)
    inputs = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
    total = [0]

    from ..quant.fake_quant import QuantConv2D, QuantLinear  # QAT wrappers call the functional ops

    linears = (nn.Linear, QuantLinear)

    def hook(layer, ins, out):
        if isinstance(layer, linears):
            total[0] += int(np.prod(out.shape)) * int(layer.weight.shape[0])
        else:
            total[0] += int(np.prod(out.shape)) * int(np.prod(layer.weight.shape[1:]))

    handles = [layer.register_forward_post_hook(hook) for layer in network.sublayers(include_self=True)
               if isinstance(layer, (nn.Conv1D, nn.Conv2D, nn.Conv3D, QuantConv2D) + linears)]
    try:
        _output_shapes(network, inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0] // int(inputs[0].shape[0])


# ---- saving ---------------------------------------------------------------------------------------------
def _owned_tensors(layer: nn.Layer) -> dict[str, paddle.Tensor]:
    found = {k: v for k, v in layer._parameters.items() if v is not None}
    found.update({k: v for k, v in layer._buffers.items() if v is not None})
    return found


def describe_architecture(network: nn.Layer) -> dict[str, Any]:
    """JSON-able spec of every layer's own parameter/buffer shapes and channel attributes.

    ``{"format": ..., "layers": {name: {"type": cls name, "params": {attr: shape}, "attrs": {...}}}}``.
    """
    layers = {}
    for name, layer in network.named_sublayers():
        tensors = _owned_tensors(layer)
        if tensors:
            layers[name] = {
                "type": type(layer).__name__,
                "params": {k: [int(d) for d in v.shape] for k, v in tensors.items()},
                "attrs": {a: int(getattr(layer, a)) for a in _ARCH_ATTRS if hasattr(layer, a)},
            }
    return {"format": _ARCH_FORMAT, "layers": layers}


def apply_shrunk_architecture(network: nn.Layer, spec: Mapping[str, Any]) -> nn.Layer:
    """Resize a fresh (unpruned) ``network`` in place to ``spec`` from :func:`describe_architecture`.

    Parameters get the leading slice of their current values (to be overwritten by the shrunk
    weights); then ``network.set_state_dict`` of the shrunk checkpoint works.
    """
    if not isinstance(spec, Mapping) or spec.get("format") != _ARCH_FORMAT:
        raise ValueError(f"not a shrunk-architecture spec (format must be {_ARCH_FORMAT!r})")
    named = dict(network.named_sublayers())
    own = {n for n, layer in named.items() if _owned_tensors(layer)}
    extra = sorted(own - set(spec["layers"]))
    unknown = sorted(set(spec["layers"]) - own)
    if extra or unknown:
        raise ValueError(f"spec does not match this network: layers only in the network {extra[:5]}, only in the "
                         f"spec {unknown[:5]}")
    for name, entry in spec["layers"].items():
        layer = named[name]
        if type(layer).__name__ != entry["type"]:
            raise ValueError(f"layer {name!r} is {type(layer).__name__} here but {entry['type']} in the spec")
        tensors = _owned_tensors(layer)
        for pname, shape in entry["params"].items():
            t = tensors.get(pname)
            if t is None:
                raise ValueError(f"layer {name!r} has no parameter {pname!r}; it has {sorted(tensors)}")
            if list(t.shape) == list(shape):
                continue
            if len(shape) != t.ndim or any(s > d for s, d in zip(shape, t.shape)):
                raise ValueError(f"layer {name!r} parameter {pname!r}: spec shape {list(shape)} does not fit in "
                                 f"{list(t.shape)} (the spec must come from a pruned copy of this architecture)")
            _set_storage(t, t.numpy()[tuple(slice(0, s) for s in shape)])
        for attr, value in entry.get("attrs", {}).items():
            setattr(layer, attr, int(value))
    return network


def check_state_dict_shapes(network: nn.Layer, state_dict: Mapping[str, Any]) -> None:
    """Raise ValueError naming every layer whose shapes differ between ``network`` and ``state_dict``."""
    own = network.state_dict()
    problems = []
    for key, value in state_dict.items():
        if key in own and list(own[key].shape) != list(np.shape(value)):
            layer = key.rsplit(".", 1)[0]
            problems.append(f"layer {layer!r} ({key}): network has {list(own[key].shape)}, "
                            f"state_dict has {list(np.shape(value))}")
    missing = sorted(set(own) - set(state_dict))
    if missing:
        problems.append(f"keys missing from the state_dict: {missing[:8]}")
    if problems:
        raise ValueError("state_dict does not fit the network: " + "; ".join(problems) +
                         ". A shrunk checkpoint must be loaded into a network rebuilt with "
                         "apply_shrunk_architecture(network, spec) (see load_shrunk).")


def save_shrunk(network: nn.Layer, path: str) -> tuple[str, str]:
    """Write ``path.pdparams`` (state_dict) and ``path.arch.json`` (architecture spec); return both paths."""
    params, arch = path + ".pdparams", path + ".arch.json"
    os.makedirs(os.path.dirname(os.path.abspath(params)), exist_ok=True)
    paddle.save(network.state_dict(), params)
    with open(arch, "w") as f:
        json.dump(describe_architecture(network), f, indent=1)
    return params, arch


def load_shrunk(network: nn.Layer, path: str) -> nn.Layer:
    """Rebuild a fresh ``network`` with ``path.arch.json``, check and load ``path.pdparams``; return it."""
    with open(path + ".arch.json") as f:
        apply_shrunk_architecture(network, json.load(f))
    state = paddle.load(path + ".pdparams")
    check_state_dict_shapes(network, state)
    network.set_state_dict(state)
    return network
