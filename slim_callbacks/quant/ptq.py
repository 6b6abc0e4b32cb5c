"""Post-training quantization: choose activation ranges from calibration batches.

Weights use per-output-channel abs-max ranges (computed from the weights, no data needed). Activation
ranges (the input of every quantized layer) come from one of:

* ``'abs_max'``: the largest |x| seen;
* ``'avg'``: the mean over batches of each batch's largest |x|;
* ``'hist'``: the ``hist_percent`` quantile of |x| from a histogram (clips rare outliers);
* ``'mse'``: the range minimizing the expected squared quantization error over the histogram;
* ``'KL'``: TensorRT's entropy calibration: the range whose 2^(bits-1)-level quantized distribution is
  closest (KL divergence) to the clipped reference distribution (Migacz, GTC 2017).

Two passes over at most ``batches`` batches (cached in memory): the first finds each layer's abs-max, the
second fills a ``bins``-bin histogram of the nonzero |x| on ``[0, abs-max]`` (exact zeros, e.g. ReLU
outputs, are exact at any range; left in, their spike made KL choose ranges far too small: top-1 0.356
vs 0.657 for abs_max on ResNet-20).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import paddle
from paddle import nn

from .observers import check_bits, qmax_for
from .qat import freeze_observers, is_quantized, quantize_qat, quantized_layers, set_fake_quant_enabled

__all__ = ["ALGOS", "calibrate", "choose_range"]

ALGOS = ("abs_max", "avg", "hist", "mse", "KL")


def _kl_range(hist: np.ndarray, edges: np.ndarray, levels: int) -> float:
    hist = hist.astype(np.float64)
    n = len(hist)
    if n <= levels:
        return float(edges[-1])
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()  # clipped outliers pile up in the last bin
        sliced = hist[:i]
        q = np.zeros(i)
        for chunk in np.array_split(np.arange(i), levels):
            nonzero = sliced[chunk] > 0
            count = nonzero.sum()
            if count:
                q[chunk[nonzero]] = sliced[chunk].sum() / count
        p_sum, q_sum = ref.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p = ref / p_sum
        qn = q / q_sum
        mask = p > 0
        kl = np.sum(p[mask] * np.log(p[mask] / np.maximum(qn[mask], 1e-12)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _mse_range(hist: np.ndarray, edges: np.ndarray, bits: int) -> float:
    centers = (edges[:-1] + edges[1:]) / 2
    qmax = qmax_for(bits)
    best_t, best_err = float(edges[-1]), np.inf
    n = len(hist)
    for i in np.unique(np.linspace(max(1, n // 20), n, 200).astype(int)):
        t = float(edges[i])
        if t <= 0:
            continue
        q = np.minimum(np.round(centers / t * qmax), qmax) * t / qmax
        err = float(np.sum(hist * (centers - q) ** 2))
        if err < best_err:
            best_err, best_t = err, t
    return best_t


def choose_range(hist: np.ndarray, edges: np.ndarray, algo: str, *, bits: int = 8, hist_percent: float = 0.9999,
                 abs_max: float | None = None, batch_maxima: Sequence[float] | None = None) -> float:
    """The activation range for ``algo`` from a histogram of |x| (``edges`` from 0 to the abs-max)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown PTQ algo {algo!r}; valid: {', '.join(ALGOS)}")
    if algo == "abs_max":
        return float(abs_max if abs_max is not None else edges[-1])
    if algo == "avg":
        if not batch_maxima:
            raise ValueError("algo 'avg' needs the per-batch maxima")
        return float(np.mean(batch_maxima))
    total = float(hist.sum())
    if total <= 0:
        return float(edges[-1])
    if algo == "hist":
        cdf = np.cumsum(hist) / total
        i = int(np.searchsorted(cdf, hist_percent))
        return float(edges[min(i + 1, len(edges) - 1)])
    if algo == "mse":
        return _mse_range(hist, edges, bits)
    return _kl_range(hist, edges, 1 << (bits - 1))


def _batches(data: Any, batches: int, batch_size: int = 32) -> list[paddle.Tensor]:
    if isinstance(data, np.ndarray):
        items: Iterable = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        items = data
    out = []
    for item in items:
        if len(out) >= batches:
            break
        x = item[0] if isinstance(item, (list, tuple)) else item
        out.append(x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x, dtype=np.float32)))
    if not out:
        raise ValueError("calibration data is empty: give at least one batch of inputs")
    return out


def calibrate(
    network: nn.Layer,
    data: Any,
    *,
    algo: str = "KL",
    batches: int = 10,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    hist_percent: float = 0.9999,
    bins: int = 2048,
    layer_types: Sequence[str] = ("Conv2D", "Linear"),
    skip: Sequence[str] = (),
    fold_bn: bool = True,
) -> dict[str, float]:
    """Quantize a trained float ``network`` in place (if not yet) and set activation ranges from data.

    Args:
        data: a DataLoader / iterable of batches (inputs first) or an ndarray of inputs (batches of 32).
        algo: one of :data:`ALGOS`.
        batches: calibration batches used (at most).
        bins: histogram bins for 'hist', 'mse', 'KL'.

    Returns: layer name -> chosen activation range. Observers end frozen; the network is in eval mode,
    ready for evaluation or :func:`~slim_callbacks.quant.export.export_int8`.
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown PTQ algo {algo!r}; valid: {', '.join(ALGOS)}")
    check_bits(activation_bits, "activation_bits")
    if int(batches) < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    cached = _batches(data, int(batches))
    if not is_quantized(network):
        quantize_qat(network, weight_bits=weight_bits, activation_bits=activation_bits, per_channel=per_channel,
                     layer_types=layer_types, skip=skip, fold_bn=fold_bn, example_inputs=cached[0])
    layers = quantized_layers(network)
    network.eval()
    set_fake_quant_enabled(network, False)  # statistics of the float network
    stats = {name: {"max": 0.0, "maxima": [], "hist": np.zeros(int(bins))} for name in layers}
    handles = []

    def make_hook(name: str, second_pass: list):
        def hook(layer, inputs):
            a = np.abs(inputs[0].numpy()).ravel()
            s = stats[name]
            if not second_pass[0]:
                m = float(a.max()) if a.size else 0.0
                s["maxima"].append(m)
                s["max"] = max(s["max"], m)
            elif s["max"] > 0:
                # exact zeros (ReLU outputs) are exact at every range; their spike would drag KL and
                # the percentile towards tiny ranges, so they stay out of the histogram
                s["hist"] += np.histogram(a[a > 0], bins=int(bins), range=(0.0, s["max"]))[0]
        return hook

    second = [False]
    try:
        for name, layer in layers.items():
            handles.append(layer.act_quant.register_forward_pre_hook(make_hook(name, second)))
        with paddle.no_grad():
            for x in cached:
                network(x)
            if algo in ("hist", "mse", "KL"):
                second[0] = True
                for x in cached:
                    network(x)
    finally:
        for h in handles:
            h.remove()
        set_fake_quant_enabled(network, True)
    ranges = {}
    for name, layer in layers.items():
        s = stats[name]
        edges = np.linspace(0.0, s["max"], int(bins) + 1)
        bits = layer.act_quant.bits + int(layer.act_quant.unsigned)  # u8 inputs have twice the levels
        r = choose_range(s["hist"], edges, algo, bits=bits, hist_percent=hist_percent,
                         abs_max=s["max"], batch_maxima=s["maxima"])
        r = max(r, 1e-8)
        ranges[name] = r
        q = layer.act_quant
        q.scale.set_value(paddle.to_tensor([r], dtype="float32"))
        q.accum.set_value(paddle.to_tensor([r], dtype="float32"))
        q.state.set_value(paddle.to_tensor([1.0], dtype="float32"))
    freeze_observers(network)
    return ranges
