"""Quantization arithmetic and activation observers.

Conventions (the same as Paddle's ``quantize_linear``/``dequantize_linear`` ops, so the exported program
computes what training simulated):

* symmetric, zero point 0; a *scale* is the float range ``r`` (an abs-max), not the step size;
* ``qmax = 2 ** (bits - 1) - 1``; ``q = clip(round(x / r * qmax), -qmax, qmax)``; ``x_hat = q * r / qmax``;
* the straight-through estimator: ``d x_hat / d x = 1`` (``x + stop_gradient(x_hat - x)``).

Observers are :class:`paddle.nn.Layer` objects whose state lives in persistable buffers, so
``model.save``/``model.load`` (and ``Layer.state_dict``) carry it.
"""

from __future__ import annotations

import paddle
from paddle import _C_ops, nn

__all__ = [
    "ACTIVATION_OBSERVERS",
    "ActivationQuantizer",
    "check_bits",
    "fake_quantize",
    "per_channel_absmax",
    "qmax_for",
]

ACTIVATION_OBSERVERS = ("ema_abs_max", "percentile")
_EPS = 1e-8


def check_bits(bits: int, what: str) -> int:
    """Validate a bit width (2..8 inclusive) and return it as int; ``what`` names the option in the error."""
    if isinstance(bits, bool) or not isinstance(bits, (int,)) and not (isinstance(bits, float) and bits.is_integer()):
        raise TypeError(f"{what} must be an integer in 2..8, got {bits!r}")
    bits = int(bits)
    if not 2 <= bits <= 8:
        raise ValueError(f"{what}={bits} is outside the supported range 2..8 (8 = INT8 deployment, 4 = experimental)")
    return bits


def qmax_for(bits: int) -> int:
    """Largest quantized magnitude for symmetric ``bits``-bit integers (127 for 8 bits)."""
    return (1 << (bits - 1)) - 1


def _broadcast(scale: paddle.Tensor, ndim: int, axis: int | None) -> paddle.Tensor:
    if axis is None or scale.size == 1:
        return scale.reshape([1] * ndim) if ndim else scale.reshape([])
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def fake_quantize(x: paddle.Tensor, scale: paddle.Tensor, bits: int, axis: int | None = None) -> paddle.Tensor:
    """Quantize-dequantize ``x`` with range ``scale`` (per tensor, or per slice along ``axis``), STE gradient.

    Values beyond the range are clipped to it. The gradient with respect to ``x`` is the identity.
    """
    qmax = float(qmax_for(bits))
    s = paddle.clip(_broadcast(scale.detach().astype(x.dtype), x.ndim, axis), min=_EPS)
    with paddle.no_grad():
        q = paddle.clip(paddle.round(x / s * qmax), -qmax, qmax) * (s / qmax)
    return x + (q - x).detach()


def per_channel_absmax(w: paddle.Tensor, axis: int | None) -> paddle.Tensor:
    """Abs-max of ``w`` over every axis but ``axis`` (1-D, one per channel), or over all (shape [1])."""
    a = w.detach().abs()
    if axis is None:
        return a.max().reshape([1])
    axis = axis % w.ndim
    reduce_axes = [d for d in range(w.ndim) if d != axis]
    return a.max(axis=reduce_axes)


class ActivationQuantizer(nn.Layer):
    """Per-tensor fake quantizer for activations with a running range estimate.

    ``observer='ema_abs_max'``: each training batch's abs-max enters a bias-corrected exponential moving
    average (``accum = m * accum + max|x|``; ``state = m * state + 1``; ``scale = accum / state``, where
    ``m = moving_rate``), as Paddle's ``moving_average_abs_max`` does. ``observer='percentile'``: the same
    average of the batch's ``percentile`` quantile of ``|x|`` (clips outliers).

    In eval mode, or once :attr:`frozen` (``freeze_observer_epoch``), the stored scale is used unchanged.
    ``enabled=False`` only observes (PTQ calibration) and returns ``x`` untouched.
    """

    def __init__(self, bits: int = 8, observer: str = "ema_abs_max", moving_rate: float = 0.9,
                 percentile: float = 0.9999) -> None:
        super().__init__()
        self.bits = check_bits(bits, "activation_bits")
        if observer not in ACTIVATION_OBSERVERS:
            raise ValueError(f"unknown activation observer {observer!r}; valid: {', '.join(ACTIVATION_OBSERVERS)}")
        if not 0.0 <= float(moving_rate) < 1.0:
            raise ValueError(f"moving_rate must be in [0, 1), got {moving_rate!r}")
        if not 0.0 < float(percentile) <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {percentile!r}")
        self.observer = observer
        self.moving_rate = float(moving_rate)
        self.percentile = float(percentile)
        self.frozen = False
        self.enabled = True
        #: the input is a ReLU output: deployment (oneDNN) quantizes it as u8, 2**bits - 1 levels on [0, r]
        self.unsigned = False
        self.register_buffer("scale", paddle.zeros([1], "float32"), persistable=True)
        self.register_buffer("accum", paddle.zeros([1], "float32"), persistable=True)
        self.register_buffer("state", paddle.zeros([1], "float32"), persistable=True)

    @property
    def initialized(self) -> bool:
        """True once the range has been observed (or loaded)."""
        return float(self.state.numpy()[0]) > 0 or float(self.scale.numpy()[0]) > 0

    def _batch_range(self, x: paddle.Tensor) -> paddle.Tensor:
        a = x.detach().abs().astype("float32")
        if self.observer == "ema_abs_max" or self.percentile >= 1.0:
            return a.max().reshape([1])
        flat = a.flatten()
        k = max(1, int(round(self.percentile * flat.shape[0])))
        return paddle.kthvalue(flat, k)[0].reshape([1])

    @paddle.no_grad()
    def observe(self, x: paddle.Tensor) -> None:
        """Fold one batch's range into the running estimate."""
        cur = self._batch_range(x)
        m = self.moving_rate
        paddle.assign(self.accum * m + cur, self.accum)
        paddle.assign(self.state * m + 1.0, self.state)
        paddle.assign(self.accum / self.state, self.scale)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        observing = self.training and not self.frozen
        if self.enabled and self.observer == "ema_abs_max" and x.dtype == paddle.float32:
            # one fused kernel: observe + quantize-dequantize + straight-through gradient
            out, scale, state, accum = _C_ops.fake_quantize_dequantize_moving_average_abs_max(
                x, self.scale, self.accum if observing else None, self.state if observing else None,
                self.moving_rate, self.bits + int(self.unsigned), not observing, 1)
            if observing:
                _C_ops.assign_out_(scale, self.scale)
                _C_ops.assign_out_(state, self.state)
                _C_ops.assign_out_(accum, self.accum)
            return out
        if observing:
            self.observe(x)
        if not self.enabled:
            return x
        return fake_quantize(x, self.scale, self.bits + int(self.unsigned))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer}, moving_rate={self.moving_rate}, frozen={self.frozen}"
