"""Dynamic (weight-only) int8 quantization of Linear, LSTM, GRU and SimpleRNN layers.

Weights are stored as int8 with one float32 scale per output row/column (symmetric, abs-max) and
dequantized to float32 at every forward pass; activations stay float. Biases stay float32. This cuts
the *stored* size of those weights 4x (``paddle.save(net.state_dict())``) for models dominated by
Linear/recurrent weights; compute still runs in FP32 (Paddle 3.3.1 has no CPU int8 GEMM reachable from
dygraph), so run time gains nothing and pays the dequantization (see docs/quantization.md for figures).
"""

from __future__ import annotations

import re
import warnings
from typing import Sequence

import paddle
import paddle.nn.functional as F
from paddle import nn

from .observers import check_bits, qmax_for

__all__ = ["DYNAMIC_TYPES", "DynamicQuantLinear", "DynamicQuantRNN", "quantize_dynamic"]


def _quantize_rows(w: paddle.Tensor, axis: int, bits: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(int8 tensor, float32 ranges along ``axis``) with ``w ~= q * range / qmax``."""
    reduce_axes = [d for d in range(w.ndim) if d != axis]
    r = paddle.clip(w.detach().abs().max(axis=reduce_axes), min=1e-8)
    shape = [1] * w.ndim
    shape[axis] = -1
    qmax = float(qmax_for(bits))
    q = paddle.clip(paddle.round(w.detach() / r.reshape(shape) * qmax), -qmax, qmax).astype("int8")
    return q, r.astype("float32")


def _dequantize(q: paddle.Tensor, r: paddle.Tensor, axis: int, qmax: float) -> paddle.Tensor:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype("float32") * (r / qmax).reshape(shape)


class DynamicQuantLinear(nn.Layer):
    """``nn.Linear`` with an int8 weight (per output column) dequantized at run time."""

    def __init__(self, linear: nn.Linear, bits: int = 8) -> None:
        super().__init__()
        self.bits = check_bits(bits, "bits")
        q, r = _quantize_rows(linear.weight, 1, self.bits)
        self.register_buffer("weight_int8", q, persistable=True)
        self.register_buffer("weight_range", r, persistable=True)
        self.bias = linear.bias

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        w = _dequantize(self.weight_int8, self.weight_range, 1, float(qmax_for(self.bits)))
        return F.linear(x, w, self.bias)


class DynamicQuantRNN(nn.Layer):
    """An ``nn.LSTM``/``nn.GRU``/``nn.SimpleRNN`` whose weight matrices are int8 (per gate row)."""

    def __init__(self, rnn: nn.Layer, bits: int = 8) -> None:
        super().__init__()
        self.bits = check_bits(bits, "bits")
        object.__setattr__(self, "_rnn", rnn)
        by_id = {id(p): name for name, p in rnn.named_parameters(include_sublayers=False)}
        self._slots: list[tuple[str, str]] = []  # ('q', name) for quantized weights, ('f', name) for biases
        for p in rnn._all_weights:
            name = by_id[id(p)]
            key = name.replace(".", "_")
            if name.startswith("weight"):
                q, r = _quantize_rows(p, 0, self.bits)
                self.register_buffer(key + "_int8", q, persistable=True)
                self.register_buffer(key + "_range", r, persistable=True)
                self._slots.append(("q", key))
            else:
                setattr(self, key, p)
                self._slots.append(("f", key))
        # drop the float weights from the RNN: only the int8 copies are kept and saved
        for name in [n for n in by_id.values() if n.startswith("weight")]:
            rnn._parameters.pop(name, None)
        rnn._all_weights = []

    def forward(self, inputs, initial_states=None, sequence_length=None):
        qmax = float(qmax_for(self.bits))
        weights = []
        for kind, key in self._slots:
            if kind == "q":
                weights.append(_dequantize(getattr(self, key + "_int8"), getattr(self, key + "_range"), 0, qmax))
            else:
                weights.append(getattr(self, key))
        rnn = self._rnn
        rnn.training = self.training
        rnn._all_weights = weights
        try:
            return rnn(inputs, initial_states, sequence_length)
        finally:
            rnn._all_weights = []


DYNAMIC_TYPES = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.SimpleRNN}


def quantize_dynamic(network: nn.Layer, *, layer_types: Sequence[str] = ("Linear", "LSTM", "GRU"),
                     bits: int = 8, skip: Sequence[str] = ()) -> list[str]:
    """Replace selected layers in place by weight-only int8 versions; return their names.

    For inference (the int8 weights are not trainable). ``skip``: regexes on dotted layer names.
    """
    check_bits(bits, "bits")
    types = [layer_types] if isinstance(layer_types, str) else list(layer_types)
    bad = [t for t in types if t not in DYNAMIC_TYPES]
    if bad or not types:
        raise ValueError(f"unknown layer_types {bad or types!r}; valid: {sorted(DYNAMIC_TYPES)}")
    classes = tuple(DYNAMIC_TYPES[t] for t in types)
    patterns = [skip] if isinstance(skip, str) else list(skip)
    candidates = [(n, l) for n, l in network.named_sublayers() if isinstance(l, classes)]
    for pattern in patterns:
        if not any(re.search(pattern, n) for n, _ in candidates):
            warnings.warn(f"skip pattern {pattern!r} matches no layer; layer names: {[n for n, _ in candidates]}",
                          stacklevel=2)
    targets = [(n, l) for n, l in candidates if not any(re.search(p, n) for p in patterns)]
    if not targets:
        raise ValueError(f"network {type(network).__name__} has no layer of types {types} to quantize "
                         f"(after skip={patterns})")
    for name, layer in targets:
        new = DynamicQuantLinear(layer, bits) if isinstance(layer, nn.Linear) else DynamicQuantRNN(layer, bits)
        new.training = layer.training
        parent = network
        *path, leaf = name.split(".")
        for part in path:
            parent = parent._sub_layers[part]
        parent._sub_layers[leaf] = new
    return [n for n, _ in targets]
