"""Quantization: fake-quant QAT, post-training calibration, weight-only dynamic quantization, INT8 export."""

from .observers import ActivationQuantizer, fake_quantize, per_channel_absmax
from .fake_quant import FoldableBatchNorm, QuantConv2D, QuantLinear, QuantWrapper
from .bn_fold import find_conv_bn_pairs, find_relu_fed_layers
from .qat import (
    fold_batch_norms,
    folded_pairs,
    freeze_observers,
    is_quantized,
    load_quant_state,
    quant_state,
    quantize_qat,
    quantized_layers,
    set_fake_quant_enabled,
)
from .ptq import ALGOS as PTQ_ALGOS, calibrate, choose_range
from .export import export_float, export_int8, onednn_kernel_census, verify_deployment
from ._deploy_worker import inference_config
from .callback import PTQCallback, QATCallback
from .dynamic import DynamicQuantLinear, DynamicQuantRNN, quantize_dynamic

__all__ = [
    "DynamicQuantLinear",
    "DynamicQuantRNN",
    "quantize_dynamic",
    "PTQ_ALGOS",
    "PTQCallback",
    "QATCallback",
    "calibrate",
    "choose_range",
    "export_float",
    "export_int8",
    "inference_config",
    "folded_pairs",
    "onednn_kernel_census",
    "verify_deployment",
    "ActivationQuantizer",
    "FoldableBatchNorm",
    "QuantConv2D",
    "QuantLinear",
    "QuantWrapper",
    "fake_quantize",
    "find_conv_bn_pairs",
    "find_relu_fed_layers",
    "fold_batch_norms",
    "freeze_observers",
    "is_quantized",
    "load_quant_state",
    "per_channel_absmax",
    "quant_state",
    "quantize_qat",
    "quantized_layers",
    "set_fake_quant_enabled",
]
