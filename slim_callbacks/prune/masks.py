"""The pruning core: choose parameters, compute masks, make them hold, count sparsity, strip.

Works on a plain ``paddle.nn.Layer`` (no hapi needed)::

    masker = Masker(net, granularity="global")
    masker.update(0.8)            # masks for 80% sparsity, applied to the weights now
    ... loss.backward(); opt.step(); masker.apply() ...   # re-apply after every optimizer step
    masker.sparsity_report()      # counted from the actual weights
    masker.strip()                # permanent: weights stay zero, masks and hooks gone

How masks hold. A pruned weight must stay exactly 0 through every optimizer step. Two mechanisms:

* re-applying the mask right after each optimizer update (``apply()``, an in-place multiply per
  parameter; the callback registers it as a seam step hook). This alone is exact: every forward pass
  and every checkpoint sees the masked weights, whatever momentum or Adam state would do.
* masking the gradient (``mask_gradients=True``, off by default, a hook on each parameter). It keeps
  momentum and Adam moments of pruned weights at zero, so nothing "pushes" a pruned weight between
  steps; on its own it is NOT exact (decoupled weight decay, or moments accumulated before a weight
  was pruned, still move it), so it is only an add-on to re-applying, at about the same cost again.
  See docs/benchmarks_prune.md for the measured cost of each.

Granularities (``sparsity`` is always the fraction of zeros in [0, 1) of the selected weights):

* ``'unstructured'``: the smallest ``|w|`` of each layer, every layer at the same sparsity.
* ``'global'``: one magnitude threshold across all selected layers (layers end up uneven).
* ``'nm'``: N:M along the input dimension (see :mod:`slim_callbacks.prune.nm`).
* ``'channel'``: whole output channels (filters) by ``criterion`` (l1, l2, fpgm, bn_scale); the
  layer's bias entries of pruned channels are masked too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import paddle
from paddle import nn

from .criteria import CHANNEL_CRITERIA, channel_scores
from .nm import check_nm_args, check_nm_shape, nm_groups_pruned, nm_mask, nm_max_sparsity

__all__ = [
    "GRANULARITIES",
    "DEFAULT_LAYER_TYPES",
    "Masker",
    "SparsityReport",
    "Target",
    "check_sparsity",
    "count_sparsity",
    "prune",
    "select_targets",
    "trace_norm_pairs",
]

GRANULARITIES = ("unstructured", "global", "nm", "channel")
DEFAULT_LAYER_TYPES = ("Conv2D", "Linear")
DEFAULT_PARAMS = (r".*weight",)

_CONV_TYPES = (nn.Conv1D, nn.Conv2D, nn.Conv3D)
_CONV_T_TYPES = (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose)
_NORM_TYPES = (nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.BatchNorm, nn.SyncBatchNorm)


@dataclass
class Target:
    """One prunable parameter.

    Attributes:
        name: full parameter name (``'layer1.0.conv1.weight'``).
        layer_name: name of the owning sublayer (``'layer1.0.conv1'``).
        layer: the owning layer.
        attr: the attribute of ``layer`` holding the parameter (``'weight'``).
        param: the Parameter.
        out_axis: axis of output channels, or None when the parameter has none (1-D).
        in_axis: axis of input channels, or None.
    """

    name: str
    layer_name: str
    layer: nn.Layer
    attr: str
    param: paddle.Tensor
    out_axis: int | None
    in_axis: int | None

    @property
    def numel(self) -> int:
        return int(np.prod(self.param.shape))


def _axes(layer: nn.Layer, param: paddle.Tensor) -> tuple[int | None, int | None]:
    if param.ndim < 2:
        return None, None
    if isinstance(layer, nn.Linear):
        return 1, 0
    if isinstance(layer, _CONV_T_TYPES):
        return 1, 0
    return 0, 1  # Conv and conv-like layers: [out, in, ...]


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), or a ValueError naming ``what``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{what} must be a fraction of zeros in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _type_names(layer_types: Sequence[str | type] | None) -> tuple[tuple[type, ...], tuple[str, ...]]:
    classes, names = [], []
    for item in DEFAULT_LAYER_TYPES if layer_types is None else layer_types:
        if isinstance(item, type):
            classes.append(item)
        elif isinstance(item, str):
            if not isinstance(getattr(nn, item, None), type):
                raise ValueError(f"unknown layer type {item!r}: give a paddle.nn class name such as 'Conv2D' or 'Linear'")
            names.append(item)
        else:
            raise TypeError(f"layer_types entries must be class names or classes, got {item!r}")
    return tuple(classes) + tuple(getattr(nn, n) for n in names), tuple(names)


def select_targets(
    net: nn.Layer,
    params: Sequence[str] | None = None,
    layer_types: Sequence[str | type] | None = None,
    skip_first: bool = False,
    skip_last: bool = False,
) -> list[Target]:
    """The parameters to prune, in the network's definition (``named_parameters``) order.

    Args:
        net: the network.
        params: regular expressions matched in full (``re.fullmatch``) against parameter names; a
            parameter is chosen when any matches. Default ``['.*weight']`` (biases and norm layers are
            left alone by ``layer_types``). A pattern that matches no candidate is an error.
        layer_types: ``paddle.nn`` class names or classes whose own parameters are candidates; default
            ``['Conv2D', 'Linear']``. An empty list means every layer.
        skip_first: leave the first chosen parameter dense (usually the stem conv, which sees raw pixels).
        skip_last: leave the last chosen parameter dense (usually the classifier).
    """
    patterns = list(DEFAULT_PARAMS if params is None else params)
    if isinstance(params, str):
        patterns = [params]
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as err:
        raise ValueError(f"bad parameter regex {err.pattern!r}: {err}") from err
    classes, _ = _type_names(layer_types)
    all_names = [n for n, _ in net.named_parameters()]
    candidates: list[Target] = []
    seen: set[int] = set()
    for layer_name, layer in net.named_sublayers(include_self=True):
        if classes and not isinstance(layer, classes):
            continue
        for attr, param in layer.named_parameters(include_sublayers=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{layer_name}.{attr}" if layer_name else attr
            out_axis, in_axis = _axes(layer, param)
            candidates.append(Target(full, layer_name, layer, attr, param, out_axis, in_axis))
    order = {n: i for i, n in enumerate(all_names)}
    candidates.sort(key=lambda t: order.get(t.name, len(order)))
    cand_names = [t.name for t in candidates]
    for pattern, rx in zip(patterns, compiled):
        if not any(rx.fullmatch(n) for n in cand_names):
            shown = cand_names or all_names
            types = layer_types or list(DEFAULT_LAYER_TYPES)
            where = "candidate parameters" if cand_names else f"no parameter in layers of types {types}; all parameters"
            raise ValueError(
                f"parameter regex {pattern!r} matches nothing; {where}: {shown[:40]}"
                + (f" ... ({len(shown)} in all)" if len(shown) > 40 else "")
            )
    chosen = [t for t in candidates if any(rx.fullmatch(t.name) for rx in compiled)]
    if skip_first and chosen:
        chosen = chosen[1:]
    if skip_last and chosen:
        chosen = chosen[:-1]
    if not chosen:
        raise ValueError(f"no parameter left to prune after skip_first/skip_last; candidates were {cand_names}")
    return chosen


def trace_norm_pairs(
    net: nn.Layer, example_input: paddle.Tensor | Sequence[paddle.Tensor], layers: Sequence[nn.Layer]
) -> dict[int, nn.Layer]:
    """Map ``id(layer)`` -> the BatchNorm layer that directly consumes its output, by tracing one forward.

    Runs ``net`` in eval mode under ``no_grad`` (BN statistics untouched); training flags are restored.
    """
    wanted = {id(layer) for layer in layers}
    produced: dict[int, nn.Layer] = {}
    keep_alive: list[Any] = []
    pairs: dict[int, nn.Layer] = {}
    handles = []

    def post(layer, inputs, output):
        if id(layer) in wanted and isinstance(output, paddle.Tensor):
            produced[id(output)] = layer
            keep_alive.append(output)

    def pre(layer, inputs):
        if inputs and isinstance(inputs[0], paddle.Tensor) and id(inputs[0]) in produced:
            pairs.setdefault(id(produced[id(inputs[0])]), layer)

    flags = [(layer, layer.training) for layer in net.sublayers(include_self=True)]
    try:
        for layer in net.sublayers(include_self=True):
            if id(layer) in wanted:
                handles.append(layer.register_forward_post_hook(post))
            if isinstance(layer, _NORM_TYPES):
                handles.append(layer.register_forward_pre_hook(pre))
        net.eval()
        inputs = list(example_input) if isinstance(example_input, (list, tuple)) else [example_input]
        with paddle.no_grad():
            net(*inputs)
    finally:
        for h in handles:
            h.remove()
        for layer, training in flags:
            layer.training = training
    return pairs


@dataclass
class SparsityReport:
    """Zeros counted from the actual weights.

    Attributes:
        per_layer: {parameter name: fraction of exact zeros} for every selected parameter.
        zeros, total: exact zero count and size over the selected parameters.
        network_zeros, network_total: the same over every parameter of the network.
    """

    per_layer: dict[str, float] = field(default_factory=dict)
    zeros: int = 0
    total: int = 0
    network_zeros: int = 0
    network_total: int = 0

    @property
    def overall(self) -> float:
        """Fraction of zeros over the selected parameters."""
        return self.zeros / self.total if self.total else 0.0

    @property
    def network(self) -> float:
        """Fraction of zeros over all parameters (biases, norms, skipped layers included)."""
        return self.network_zeros / self.network_total if self.network_total else 0.0

    @property
    def nonzero(self) -> int:
        """Nonzero parameter values in the whole network."""
        return self.network_total - self.network_zeros


def count_sparsity(net: nn.Layer, targets: Sequence[Target]) -> SparsityReport:
    """Exact zeros of ``targets`` and of all of ``net``'s parameters, read from the current weights."""
    report = SparsityReport()
    for t in targets:
        zeros = t.numel - int(paddle.count_nonzero(t.param).item())
        report.per_layer[t.name] = zeros / t.numel if t.numel else 0.0
        report.zeros += zeros
        report.total += t.numel
    seen: set[int] = set()
    for _, p in net.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = int(np.prod(p.shape))
        report.network_total += size
        report.network_zeros += size - int(paddle.count_nonzero(p).item())
    return report


class Masker:
    """Masks over selected parameters of ``net``; see the module docstring.

    Args:
        net: the network (a plain Layer).
        params, layer_types, skip_first, skip_last: parameter selection, see :func:`select_targets`.
        granularity: ``'unstructured'`` (per layer), ``'global'``, ``'nm'`` or ``'channel'``.
        n, m: the N:M pattern (granularity ``'nm'``), e.g. 2 and 4.
        criterion: channel criterion ``'l1'``, ``'l2'``, ``'fpgm'`` or ``'bn_scale'``.
        mask_gradients: also mask gradients with parameter hooks (see module docstring; off by default:
            re-applying after each step is exact on its own, and the hooks cost about as much again).
        example_input: an input for one traced forward pass, needed by ``criterion='bn_scale'`` to find
            which BatchNorm follows which layer. May also be given later with :meth:`trace`.
    """

    def __init__(
        self,
        net: nn.Layer,
        params: Sequence[str] | None = None,
        layer_types: Sequence[str | type] | None = None,
        skip_first: bool = False,
        skip_last: bool = False,
        granularity: str = "unstructured",
        n: int = 2,
        m: int = 4,
        criterion: str = "l1",
        mask_gradients: bool = False,
        example_input: Any = None,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; valid: {list(GRANULARITIES)}")
        criteria = sorted(CHANNEL_CRITERIA) + ["bn_scale"]
        if criterion not in criteria:
            raise ValueError(f"unknown channel criterion {criterion!r}; valid: {criteria}")
        self.net = net
        self.granularity = granularity
        self.n, self.m = n, m
        self.criterion = criterion
        self.mask_gradients = mask_gradients
        self.targets = select_targets(net, params, layer_types, skip_first, skip_last)
        if granularity == "nm":
            check_nm_args(n, m)
            for t in self.targets:
                check_nm_shape(f"{t.name} ({type(t.layer).__name__})", t.param.shape, t.in_axis, m)
        if granularity == "channel":
            for t in self.targets:
                if t.out_axis is None:
                    raise ValueError(
                        f"channel granularity: {t.name!r} of layer {t.layer_name!r} ({type(t.layer).__name__}, "
                        f"shape {list(t.param.shape)}) has no output channels; select conv/linear weights only "
                        f"(e.g. params=['.*weight'], layer_types=['Conv2D', 'Linear'])"
                    )
        self.masks: dict[str, paddle.Tensor] = {}
        self._bias_masks: dict[str, tuple[paddle.Tensor, paddle.Tensor]] = {}  # name -> (param, mask)
        self._hooks: dict[str, Any] = {}
        self.sparsity: float | dict[str, float] = 0.0  #: the target of the current masks (or per-layer ratios)
        self._norms: dict[int, nn.Layer] | None = None
        if criterion == "bn_scale" and granularity == "channel" and example_input is not None:
            self.trace(example_input)

    # -------------------------------------------------------------------------------- set-up
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def needs_trace(self) -> bool:
        """True while ``criterion='bn_scale'`` still needs :meth:`trace` before masks can be computed."""
        return self.granularity == "channel" and self.criterion == "bn_scale" and self._norms is None

    def trace(self, example_input: Any) -> None:
        """Find the BatchNorm after each selected layer (for ``bn_scale``) from one forward pass."""
        self._norms = trace_norm_pairs(self.net, example_input, [t.layer for t in self.targets])
        missing = [t.name for t in self.targets if id(t.layer) not in self._norms]
        if missing:
            self._norms = None
            raise ValueError(
                f"criterion 'bn_scale': no BatchNorm directly follows {missing}; exclude them (params regex, "
                f"skip_last) or use criterion 'l1', 'l2' or 'fpgm'"
            )

    # ----------------------------------------------------------------------------- masks
    def max_sparsity(self) -> float:
        """The largest reachable sparsity (below 1; (M-N)/M for N:M)."""
        return nm_max_sparsity(self.n, self.m) if self.granularity == "nm" else 1.0

    def _check_level(self, sparsity: float, what: str) -> float:
        sparsity = check_sparsity(sparsity, what)
        if self.granularity == "nm" and sparsity > self.max_sparsity() + 1e-9:
            raise ValueError(
                f"{what}: N:M {self.n}:{self.m} reaches at most sparsity {self.max_sparsity()}, asked for {sparsity}"
            )
        return sparsity

    def compute_masks(self, sparsity: float | Mapping[str, float]) -> dict[str, np.ndarray]:
        """0/1 float32 masks (numpy, one per selected parameter) for ``sparsity`` without applying them.

        ``sparsity`` is one fraction of zeros in [0, 1) for all layers, or ``{parameter name: fraction}``
        (per-layer ratios, e.g. from :func:`~slim_callbacks.prune.sensitivity.ratios_for_target`;
        missing layers stay dense; not with ``'global'``). With one fraction not below the current
        one, weights pruned so far stay pruned.
        """
        if isinstance(sparsity, Mapping):
            if self.granularity == "global":
                raise ValueError("per-layer ratios need granularity 'unstructured', 'nm' or 'channel', not 'global'")
            unknown = sorted(set(sparsity) - set(self.names))
            if unknown:
                raise KeyError(f"ratios for unknown parameters {unknown}; selected parameters: {self.names}")
            levels = {t.name: self._check_level(float(sparsity.get(t.name, 0.0)), f"sparsity of {t.name!r}") for t in self.targets}
            keep_old = False
        else:
            level = self._check_level(sparsity, "sparsity")
            levels = {t.name: level for t in self.targets}
            keep_old = bool(self.masks) and isinstance(self.sparsity, float) and level >= self.sparsity
        if self.needs_trace:
            raise RuntimeError("criterion 'bn_scale' needs Masker.trace(example_input) (or example_input=) first")
        old = {name: mask.numpy() for name, mask in self.masks.items()} if keep_old else {}
        weights = {t.name: t.param.numpy() for t in self.targets}
        if self.granularity == "global":
            return self._global_masks(float(sparsity), weights, old)  # type: ignore[arg-type]
        masks = {}
        for t in self.targets:
            w = weights[t.name]
            prev = old.get(t.name)
            sparsity = levels[t.name]
            if self.granularity == "unstructured":
                masks[t.name] = _smallest_out(np.abs(w).ravel(), sparsity, prev).reshape(w.shape)
            elif self.granularity == "nm":
                keep = nm_groups_pruned(prev, t.in_axis, self.m) if prev is not None else None
                masks[t.name] = nm_mask(w, self.n, self.m, t.in_axis, sparsity / self.max_sparsity(), keep)
            else:
                masks[t.name] = self._channel_mask(t, w, sparsity, prev)
        return masks

    def _global_masks(self, sparsity: float, weights: dict[str, np.ndarray], old: dict) -> dict[str, np.ndarray]:
        flat = np.concatenate([np.abs(weights[t.name]).ravel() for t in self.targets])
        prev = np.concatenate([old[t.name].ravel() for t in self.targets]) if old else None
        mask = _smallest_out(flat, sparsity, prev)
        out, offset = {}, 0
        for t in self.targets:
            size = weights[t.name].size
            out[t.name] = mask[offset : offset + size].reshape(weights[t.name].shape)
            offset += size
        return out

    def _channel_mask(self, t: Target, w: np.ndarray, sparsity: float, prev: np.ndarray | None) -> np.ndarray:
        assert t.out_axis is not None
        scale = None
        if self.criterion == "bn_scale":
            assert self._norms is not None
            scale = self._norms[id(t.layer)].weight.numpy()
        scores = channel_scores(self.criterion, w, t.out_axis, scale).astype(np.float64)
        channels = scores.shape[0]
        prev_channels = None
        if prev is not None:
            prev_channels = (np.moveaxis(prev, t.out_axis, 0).reshape(channels, -1) == 0).all(axis=1)
            prev_channels = np.where(prev_channels, 0.0, 1.0).astype(np.float32)
        keep = _smallest_out(scores, sparsity, prev_channels, keep_at_least=1)
        shape = [1] * w.ndim
        shape[t.out_axis] = channels
        return np.broadcast_to(keep.reshape(shape), w.shape).astype(np.float32).copy()

    def at_level(self, sparsity: float) -> bool:
        """True when the masks already hold ``sparsity`` (nothing to recompute)."""
        if not self.masks:
            return sparsity == 0.0
        return isinstance(self.sparsity, float) and abs(sparsity - self.sparsity) < 1e-12

    def update(self, sparsity: float | Mapping[str, float]) -> None:
        """Compute masks for ``sparsity`` (fraction of zeros in [0, 1), or per-layer ratios) and apply them now."""
        self.set_masks(self.compute_masks(sparsity))
        self.sparsity = dict(sparsity) if isinstance(sparsity, Mapping) else float(sparsity)

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Install masks (numpy 0/1, keyed by parameter name), hook gradients if asked, and apply."""
        unknown = sorted(set(masks) - set(self.names))
        if unknown:
            raise KeyError(f"masks for unknown parameters {unknown}; selected parameters: {self.names}")
        for t in self.targets:
            if t.name not in masks:
                continue
            mask = np.asarray(masks[t.name], dtype=np.float32)
            if list(mask.shape) != list(t.param.shape):
                raise ValueError(f"mask for {t.name!r} has shape {list(mask.shape)}, the parameter {list(t.param.shape)}")
            tensor = paddle.to_tensor(mask, dtype=t.param.dtype)
            self.masks[t.name] = tensor
            if self.mask_gradients and t.name not in self._hooks:
                self._hooks[t.name] = t.param.register_hook(self._grad_hook(t.name))
            if self.granularity == "channel":
                self._set_bias_mask(t, mask)
        self.apply()

    def _set_bias_mask(self, t: Target, mask: np.ndarray) -> None:
        bias = getattr(t.layer, "bias", None)
        if not isinstance(bias, paddle.Tensor) or bias.ndim != 1 or bias.shape[0] != mask.shape[t.out_axis]:
            return
        alive = (np.moveaxis(mask, t.out_axis, 0).reshape(mask.shape[t.out_axis], -1) != 0).any(axis=1)
        self._bias_masks[f"{t.layer_name}.bias"] = (bias, paddle.to_tensor(alive.astype(np.float32), dtype=bias.dtype))

    def _grad_hook(self, name: str):
        def hook(grad: paddle.Tensor) -> paddle.Tensor:
            mask = self.masks.get(name)
            return grad if mask is None else grad * mask

        return hook

    def apply(self) -> None:
        """Multiply every selected parameter by its mask in place (call after each optimizer update)."""
        if not self.masks:
            return
        params = {t.name: t.param for t in self.targets}
        with paddle.no_grad():
            for name, mask in self.masks.items():
                params[name].multiply_(mask)
            for param, mask in self._bias_masks.values():
                param.multiply_(mask)

    # --------------------------------------------------------------------------- accounting
    def sparsity_report(self) -> SparsityReport:
        """Exact zero counts read from the current weights (not from the masks)."""
        return count_sparsity(self.net, self.targets)

    # ----------------------------------------------------------------------------- finishing
    def remove_hooks(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()

    def clear(self) -> None:
        """Forget all masks and gradient hooks without touching the weights (target back to 0)."""
        self.remove_hooks()
        self.masks.clear()
        self._bias_masks.clear()
        self.sparsity = 0.0

    def strip(self) -> SparsityReport:
        """Make pruning permanent: apply the masks a last time, drop masks and gradient hooks.

        The zeros stay in the weights (dense storage); returns the final :class:`SparsityReport`.
        """
        self.apply()
        level = self.sparsity
        self.clear()
        self.sparsity = level
        return self.sparsity_report()

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Masks as packed bits (uint8) plus the target sparsity: small enough for every checkpoint."""
        return {
            "sparsity": self.sparsity,
            "granularity": self.granularity,
            "masks": {
                name: {"shape": list(mask.shape), "bits": np.packbits(mask.numpy() != 0)}
                for name, mask in self.masks.items()
            },
        }

    def set_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks saved by :meth:`state_dict` and apply them."""
        masks = {}
        for name, entry in state.get("masks", {}).items():
            size = int(np.prod(entry["shape"]))
            bits = np.unpackbits(np.asarray(entry["bits"], dtype=np.uint8))[:size]
            masks[name] = bits.reshape(entry["shape"]).astype(np.float32)
        if masks:
            self.set_masks(masks)
        level = state.get("sparsity", 0.0)
        self.sparsity = dict(level) if isinstance(level, dict) else float(level)


def _smallest_out(scores: np.ndarray, sparsity: float, prev: np.ndarray | None = None, keep_at_least: int = 0) -> np.ndarray:
    """A float32 0/1 mask over 1-D ``scores`` zeroing exactly ``round(sparsity * size)`` lowest scores.

    Entries already zero in ``prev`` go first, so gradual pruning never revives a pruned weight.
    """
    size = scores.shape[0]
    k = min(int(round(sparsity * size)), size - keep_at_least)
    mask = np.ones(size, dtype=np.float32)
    if k <= 0:
        return mask
    scores = scores.astype(np.float64, copy=True)
    if prev is not None:
        scores[np.asarray(prev).ravel() == 0] = -np.inf
    mask[np.argpartition(scores, k - 1)[:k]] = 0.0
    return mask


def prune(net: nn.Layer, sparsity: float, **masker_args: Any) -> Masker:
    """One-shot pruning: build a :class:`Masker` on ``net`` and prune to ``sparsity`` now.

    Keep the returned Masker to hold the masks while fine-tuning (``masker.apply()`` after each optimizer
    step, or use :class:`~slim_callbacks.prune.callback.GradualPruneCallback` with ``schedule='constant'``),
    then ``masker.strip()``. ``masker_args`` are :class:`Masker`'s keyword arguments.
    """
    masker = Masker(net, **masker_args)
    masker.update(sparsity)
    return masker
