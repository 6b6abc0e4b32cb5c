"""Fake-quantized replacements for Conv2D / Linear, and the BatchNorm stand-in used for folding.

The wrappers *reuse the original Parameter objects* under the original attribute names (``weight``,
``bias``), so the optimizer built before quantization keeps training them and checkpoint keys do not
change (``layer1.0.conv1.weight`` stays ``layer1.0.conv1.weight``). Quantizer state adds keys
(``layer1.0.conv1.act_quant.scale`` ...), stored as persistable buffers.

BatchNorm folding (Jacob et al. 2018; Krishnamoorthi 2018 sec. 3.2; the scheme of torch.ao's ConvBn):
a BN that follows a quantized conv is swapped for :class:`FoldableBatchNorm`, an identity that holds the
same gamma/beta/mean/variance Parameter objects; the conv wrapper applies it. The weights are always
quantized in folded form, ``w * k`` with ``k = gamma / sqrt(running_var + eps)``:

* training, statistics not frozen (``folded=False``): ``y = conv(x, q(w * k)) / k + b`` is normalized by
  BN with *batch* statistics (running statistics update), which keeps training as stable as with BN;
* frozen (``folded=True``, from ``freeze_bn_epoch``) and always in eval mode: the exact fold
  ``conv(x, q(w * k)) + beta + (b - mean) * k`` from running statistics: what the exported model computes.

Gamma and beta stay trainable, and no Parameter object is created, so the optimizer never needs
re-pointing.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import _C_ops, nn

from .observers import ActivationQuantizer, check_bits, fake_quantize, per_channel_absmax

__all__ = ["FoldableBatchNorm", "QuantConv2D", "QuantLinear", "QuantWrapper"]


class FoldableBatchNorm(nn.Layer):
    """Stands in for a ``BatchNorm2D`` whose conv is quantized; same Parameters, same state-dict keys."""

    def __init__(self, bn: nn.Layer) -> None:
        super().__init__()
        self.weight = bn.weight
        self.bias = bn.bias
        self._mean = bn._mean
        self._variance = bn._variance
        self.epsilon = float(bn._epsilon)
        self.momentum = float(bn._momentum)
        self.data_format = getattr(bn, "_data_format", "NCHW")
        object.__setattr__(self, "_original", bn)
        self.folded = False  #: statistics frozen: training also uses the running-statistics fold

    def scale_and_shift(self) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Per-channel ``k = gamma / sqrt(var + eps)`` and ``shift = beta - mean * k`` from running statistics."""
        k = self.weight / paddle.sqrt(self._variance.detach() + self.epsilon)
        return k, self.bias - self._mean.detach() * k

    def normalize_batch(self, y: paddle.Tensor) -> paddle.Tensor:
        """BN with batch statistics (updates the running ones), as the original layer did in training."""
        return F.batch_norm(y, self._mean, self._variance, self.weight, self.bias, training=True,
                            momentum=self.momentum, epsilon=self.epsilon, data_format=self.data_format)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x  # applied inside the quantized conv

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}, folded={self.folded}"


class QuantWrapper(nn.Layer):
    """Common part of the quantized layers: input activation quantizer + weight fake-quant."""

    weight_axis: int = 0  # output-channel axis of the weight

    def __init__(self, layer: nn.Layer, *, weight_bits: int = 8, activation_bits: int = 8, per_channel: bool = True,
                 activation_observer: str = "ema_abs_max", moving_rate: float = 0.9,
                 percentile: float = 0.9999) -> None:
        super().__init__()
        self.weight = layer.weight
        if getattr(layer, "bias", None) is not None:
            self.bias = layer.bias
        else:
            self.bias = None
        self.weight_bits = check_bits(weight_bits, "weight_bits")
        self.per_channel = bool(per_channel)
        self.act_quant = ActivationQuantizer(activation_bits, activation_observer, moving_rate, percentile)
        object.__setattr__(self, "_original", layer)
        object.__setattr__(self, "_bn", None)
        self.quantize_weights = True
        # keep the user's hooks firing on the replacement (hooks on a replaced leaf would go silent)
        self._forward_pre_hooks.update(layer._forward_pre_hooks)
        self._forward_post_hooks.update(layer._forward_post_hooks)

    # ------------------------------------------------------------------------------------------
    @property
    def original(self) -> nn.Layer:
        """The float layer this wrapper replaced (shares its Parameters)."""
        return self._original

    @property
    def bn(self) -> FoldableBatchNorm | None:
        return self._bn

    def attach_bn(self, bn: FoldableBatchNorm) -> None:
        object.__setattr__(self, "_bn", bn)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[self.weight_axis])

    def folded_weight_and_bias(self) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        """Float weight and bias the deployed layer uses (BN folded in when it is folded)."""
        w, b = self.weight, self.bias
        bn = self._bn
        if bn is not None:
            k, shift = bn.scale_and_shift()
            shape = [1] * w.ndim
            shape[self.weight_axis] = -1
            w = w * k.reshape(shape)
            b = shift if b is None else shift + b * k
        return w, b

    def weight_scale(self, weight: paddle.Tensor | None = None) -> paddle.Tensor:
        """Weight range(s): one per output channel (per_channel) or one for the tensor."""
        w = self.folded_weight_and_bias()[0] if weight is None else weight
        return per_channel_absmax(w, self.weight_axis if self.per_channel else None)

    def quantized_weight_and_bias(self) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        w, b = self.folded_weight_and_bias()
        return self._quantize_weight(w), b

    def _quantize_weight(self, w: paddle.Tensor) -> paddle.Tensor:
        if not self.quantize_weights:
            return w
        if w.dtype == paddle.float32:  # fused kernels (abs-max ranges, STE gradient, ties away from zero)
            if self.per_channel:
                return _C_ops.fake_channel_wise_quantize_dequantize_abs_max(w, self.weight_bits, 1, self.weight_axis)[0]
            return _C_ops.fake_quantize_dequantize_abs_max(w, self.weight_bits, 1)[0]
        return fake_quantize(w, self.weight_scale(w), self.weight_bits, self.weight_axis if self.per_channel else None)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.act_quant(x)
        bn = self._bn
        if bn is not None and self.training and not bn.folded:
            return self._forward_batch_statistics(x, bn)
        w, b = self.quantized_weight_and_bias()
        return self._compute(x, w, b)

    def _forward_batch_statistics(self, x: paddle.Tensor, bn: FoldableBatchNorm) -> paddle.Tensor:
        k, _ = bn.scale_and_shift()
        k = paddle.where(k.abs() < 1e-12, paddle.full_like(k, 1e-12), k)
        shape = [1] * self.weight.ndim
        shape[self.weight_axis] = -1
        y = self._compute(x, self._quantize_weight(self.weight * k.reshape(shape)), None)
        channel_shape = [1, -1, 1, 1] if bn.data_format == "NCHW" else [1, 1, 1, -1]
        y = y / k.reshape(channel_shape)
        if self.bias is not None:
            y = y + self.bias.reshape(channel_shape)
        return bn.normalize_batch(y)

    def _compute(self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None) -> paddle.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"weight_bits={self.weight_bits}, per_channel={self.per_channel}, "
                f"bn={'none' if self._bn is None else ('frozen' if self._bn.folded else 'batch statistics')}")


class QuantConv2D(QuantWrapper):
    """Fake-quantized ``nn.Conv2D`` (incl. depthwise: groups == in_channels). Weight axis 0."""

    weight_axis = 0

    def __init__(self, conv: nn.Conv2D, **kwargs) -> None:
        if getattr(conv, "_padding_mode", "zeros") != "zeros":
            raise ValueError(f"padding_mode={conv._padding_mode!r} is not supported by QuantConv2D (only 'zeros')")
        super().__init__(conv, **kwargs)
        self.stride = conv._stride
        self.padding = conv._padding
        self.dilation = conv._dilation
        self.groups = conv._groups
        self.data_format = conv._data_format

    def _compute(self, x, w, b):
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=self.groups, data_format=self.data_format)


class QuantLinear(QuantWrapper):
    """Fake-quantized ``nn.Linear``; the weight is ``[in, out]``, so output channels are axis 1."""

    weight_axis = 1

    def _compute(self, x, w, b):
        return F.linear(x, w, b)
