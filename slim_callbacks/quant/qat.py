"""Quantization-aware training on a plain ``paddle.nn.Layer`` (no hapi needed).

``quantize_qat(net)`` swaps every selected ``Conv2D``/``Linear`` *in place* for a fake-quantized wrapper
that shares the original Parameter objects (the optimizer keeps training them; a deep copy would leave
it holding stale tensors), and optionally swaps each BatchNorm that follows a quantized conv for a
:class:`~slim_callbacks.quant.fake_quant.FoldableBatchNorm` (simulated folding, see fake_quant.py).

Typical hand-written loop::

    quantize_qat(net, example_inputs=x0)          # BN folded into quantized weights
    for epoch in range(epochs):
        if epoch == 1: freeze_observers(net)      # ranges fixed from here on
        ... usual training ...
    export_int8(net, "out/model", [None, 3, 32, 32])
"""

from __future__ import annotations

import re
import warnings
from typing import Iterable, Sequence

import paddle
from paddle import nn

from .bn_fold import BN_TYPES, find_conv_bn_pairs, find_relu_fed_layers
from .fake_quant import FoldableBatchNorm, QuantConv2D, QuantLinear, QuantWrapper
from .observers import ACTIVATION_OBSERVERS, ActivationQuantizer, check_bits

__all__ = [
    "LAYER_TYPES",
    "fold_batch_norms",
    "folded_pairs",
    "freeze_observers",
    "is_quantized",
    "load_quant_state",
    "quant_state",
    "quantize_qat",
    "quantized_layers",
    "set_fake_quant_enabled",
]

LAYER_TYPES = {"Conv2D": (nn.Conv2D, QuantConv2D), "Linear": (nn.Linear, QuantLinear)}


def _set_child(network: nn.Layer, dotted: str, new: nn.Layer) -> None:
    parent = network
    *path, leaf = dotted.split(".")
    for part in path:
        parent = parent._sub_layers[part]
    parent._sub_layers[leaf] = new


def _resolve_types(layer_types: Iterable[str]) -> list[str]:
    types = [layer_types] if isinstance(layer_types, str) else list(layer_types)
    bad = [t for t in types if t not in LAYER_TYPES]
    if bad or not types:
        raise ValueError(f"unknown layer_types {bad or types!r}; valid: {sorted(LAYER_TYPES)}")
    return types


def quantized_layers(network: nn.Layer) -> dict[str, QuantWrapper]:
    """Name -> fake-quantized wrapper, in registration order."""
    return {name: layer for name, layer in network.named_sublayers() if isinstance(layer, QuantWrapper)}


def is_quantized(network: nn.Layer) -> bool:
    return any(isinstance(layer, QuantWrapper) for layer in network.sublayers())


def quantize_qat(
    network: nn.Layer,
    *,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    activation_observer: str = "ema_abs_max",
    moving_rate: float = 0.9,
    percentile: float = 0.9999,
    layer_types: Sequence[str] = ("Conv2D", "Linear"),
    skip: Sequence[str] = (),
    fold_bn: bool = True,
    fold_now: bool = False,
    example_inputs: paddle.Tensor | Sequence | None = None,
    bn_pairs: Sequence[Sequence[str]] | None = None,
    unsigned_inputs: Sequence[str] | None = None,
) -> dict[str, QuantWrapper]:
    """Insert fake quantization into ``network`` in place; return the wrappers by layer name.

    Args:
        weight_bits / activation_bits: 2..8 (8 deploys as INT8; fewer bits are simulation-only, 4 is
            the experimental low-bit mode).
        per_channel: symmetric per-output-channel weight ranges (else one range per tensor).
        activation_observer: 'ema_abs_max' or 'percentile' (the running estimate of input ranges).
        moving_rate: EMA factor in [0, 1) for activation ranges, per training batch.
        percentile: quantile of |x| used by the 'percentile' observer, in (0, 1].
        layer_types: which layer classes to quantize: 'Conv2D' (incl. depthwise) and/or 'Linear'.
        skip: regular expressions (``re.search``) on dotted layer names to leave in float.
        fold_bn: fold each BatchNorm applied directly to a quantized conv into it (weights are quantized
            in folded form; see fake_quant.py).
        fold_now: freeze those BNs' statistics now (training then uses the running-statistics fold);
            False (default) normalizes training batches with batch statistics until
            :func:`fold_batch_norms` (``freeze_bn_epoch``). Eval always uses the running-statistics fold.
        example_inputs: one batch for tracing conv -> BN pairs; None pairs them by structure.
        bn_pairs: explicit ``[(conv_name, bn_name), ...]`` to fold (overrides tracing; used on resume).
        unsigned_inputs: names of layers fed by a ReLU (quantized as u8, as oneDNN deploys them);
            None traces them on ``example_inputs`` (none without it).

    Raises:
        ValueError: bad bits/observer/types, an already quantized network, or nothing to quantize.
    """
    check_bits(weight_bits, "weight_bits")
    check_bits(activation_bits, "activation_bits")
    if activation_observer not in ACTIVATION_OBSERVERS:
        raise ValueError(f"unknown activation_observer {activation_observer!r}; valid: {', '.join(ACTIVATION_OBSERVERS)}")
    types = _resolve_types(layer_types)
    if is_quantized(network):
        raise ValueError(f"{type(network).__name__} is already quantized (layers: {list(quantized_layers(network))})")
    patterns = [skip] if isinstance(skip, str) else list(skip)
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise ValueError(f"bad skip pattern: {exc}") from None

    classes = tuple(LAYER_TYPES[t][0] for t in types)
    candidates = [(n, l) for n, l in network.named_sublayers() if isinstance(l, classes)
                  and not isinstance(l, nn.Conv2DTranspose)]
    for pattern, rx in zip(patterns, compiled):
        if not any(rx.search(n) for n, _ in candidates):
            warnings.warn(f"skip pattern {pattern!r} matches no quantizable layer; layer names: "
                          f"{[n for n, _ in candidates]}", stacklevel=2)
    targets = [(n, l) for n, l in candidates if not any(rx.search(n) for rx in compiled)]
    if not targets:
        present = sorted({type(l).__name__ for l in network.sublayers()}) or ["(no sublayers)"]
        raise ValueError(
            f"network {type(network).__name__} has no quantizable layer of types {types} "
            f"(after skip={patterns}); its layer types: {present}"
        )

    if not fold_bn:
        pairs = []
    elif bn_pairs is not None:
        pairs = [tuple(p) for p in bn_pairs]
    else:
        pairs = find_conv_bn_pairs(network, example_inputs)
    if unsigned_inputs is None:
        unsigned_inputs = find_relu_fed_layers(network, example_inputs) if example_inputs is not None else []
    unsigned = set(unsigned_inputs)
    bn_of = {conv: bn for conv, bn in pairs}
    bn_layers = dict(network.named_sublayers())
    kwargs = dict(weight_bits=weight_bits, activation_bits=activation_bits, per_channel=per_channel,
                  activation_observer=activation_observer, moving_rate=moving_rate, percentile=percentile)
    wrappers: dict[str, QuantWrapper] = {}
    for name, layer in targets:
        wrapper_cls = QuantConv2D if isinstance(layer, nn.Conv2D) else QuantLinear
        wrapper = wrapper_cls(layer, **kwargs)
        wrapper.training = layer.training
        _set_child(network, name, wrapper)
        wrapper.act_quant.unsigned = name in unsigned
        wrappers[name] = wrapper
        bn_name = bn_of.get(name)
        if bn_name is not None and isinstance(bn_layers.get(bn_name), BN_TYPES):
            stand_in = FoldableBatchNorm(bn_layers[bn_name])
            stand_in.training = bn_layers[bn_name].training
            stand_in.folded = bool(fold_now)
            _set_child(network, bn_name, stand_in)
            wrapper.attach_bn(stand_in)
    return wrappers


def folded_pairs(network: nn.Layer) -> list[tuple[str, str]]:
    """``[(conv_name, bn_name), ...]`` of quantized convs with a foldable BN (what :func:`quantize_qat` paired)."""
    names = {id(layer): name for name, layer in network.named_sublayers()}
    return [(name, names[id(w.bn)]) for name, w in quantized_layers(network).items()
            if w.bn is not None and id(w.bn) in names]


def fold_batch_norms(network: nn.Layer) -> list[str]:
    """Freeze every folded BN's statistics (training then uses the running-statistics fold); return their names."""
    names = []
    for name, layer in network.named_sublayers():
        if isinstance(layer, FoldableBatchNorm) and not layer.folded:
            layer.folded = True
            names.append(name)
    return names


def freeze_observers(network: nn.Layer, frozen: bool = True) -> int:
    """Stop (or resume) updating activation ranges; return how many quantizers changed."""
    n = 0
    for layer in network.sublayers():
        if isinstance(layer, ActivationQuantizer):
            layer.frozen = bool(frozen)
            n += 1
    return n


def set_fake_quant_enabled(network: nn.Layer, enabled: bool) -> None:
    """Switch fake quantization on/off everywhere (off: the float, BN-folded model; observers still observe)."""
    for layer in quantized_layers(network).values():
        layer.quantize_weights = bool(enabled)
        layer.act_quant.enabled = bool(enabled)


def quant_state(network: nn.Layer) -> dict:
    """Flags and ranges of every quantizer/stand-in (for the seam's checkpoint state)."""
    state = {"bn_folded": {}, "observers": {}}
    for name, layer in network.named_sublayers():
        if isinstance(layer, FoldableBatchNorm):
            state["bn_folded"][name] = layer.folded
        elif isinstance(layer, ActivationQuantizer):
            state["observers"][name] = {
                "frozen": layer.frozen,
                "unsigned": layer.unsigned,
                "scale": layer.scale.numpy().copy(),
                "accum": layer.accum.numpy().copy(),
                "state": layer.state.numpy().copy(),
            }
    return state


def load_quant_state(network: nn.Layer, state: dict) -> None:
    """Restore :func:`quant_state` output onto an identically quantized network."""
    layers = dict(network.named_sublayers())
    for name, folded in state.get("bn_folded", {}).items():
        if isinstance(layers.get(name), FoldableBatchNorm):
            layers[name].folded = bool(folded)
    for name, obs in state.get("observers", {}).items():
        layer = layers.get(name)
        if not isinstance(layer, ActivationQuantizer):
            raise KeyError(f"quantizer state for {name!r} but the network has no activation quantizer there; "
                           f"quantizers: {[n for n, l in layers.items() if isinstance(l, ActivationQuantizer)]}")
        layer.frozen = bool(obs["frozen"])
        layer.unsigned = bool(obs.get("unsigned", False))
        for key in ("scale", "accum", "state"):
            getattr(layer, key).set_value(paddle.to_tensor(obs[key], dtype="float32"))
