"""INT8 export for Paddle Inference + oneDNN, and a deployment check that measures what users get.

Route (measured on Paddle 3.3.1 CPU): the network is copied, every fake-quantized layer becomes the
float layer with BN folded in, preceded by ``quantize_linear``/``dequantize_linear`` pairs carrying the
*trained* ranges (per-tensor for the input activation, per-output-channel for the weight), and the copy
is saved in the **legacy** program format (``.pdmodel``; built in this process under
``paddle.pir_utils.DygraphOldIrGuard``). Paddle Inference with ``enable_onednn_int8()`` turns those
pairs into scales (``quant_dequant_onednn_pass``) and runs the convolutions / fully connected layers as
s8/u8 oneDNN primitives. The PIR ``.json`` format runs in FP32 here, hence the legacy format.

Weights are stored as int8 by default (``weight_storage='int8'``: an int8 persistable tensor followed by
``dequantize_linear``), so ``.pdiparams`` shrinks about 4x; oneDNN reads the integers and per-channel
scales and runs s8 weights. The other route, float32 weights on the int8 grid followed by a
quantize/dequantize pair (``'float'``), also runs INT8 but keeps the FP32 file size. (Float32 tensors
holding integer values followed by ``dequantize_linear`` alone give wrong outputs in Paddle 3.3.1's
oneDNN pass: the integers must have the int8 dtype.)
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from .fake_quant import FoldableBatchNorm, QuantConv2D, QuantWrapper
from .observers import per_channel_absmax, qmax_for
from .qat import quantized_layers

__all__ = ["export_float", "export_int8", "verify_deployment", "onednn_kernel_census"]

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_deploy_worker.py")


def _qdq(scales: np.ndarray, axis: int, bits: int) -> nn.Layer:
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter, LinearQuanterDequanter

    scales = np.asarray(scales, dtype="float32").reshape([-1])
    zero = np.zeros_like(scales)
    return LinearQuanterDequanter(LinearQuanter(scales, zero, axis, bits), LinearDequanter(scales, zero, axis, bits))


class _Deployed(nn.Layer):
    """A folded float conv/linear with optional input and weight quantize-dequantize pairs."""

    def __init__(self, wrapper: QuantWrapper, int8: bool, weight_storage: str = "float") -> None:
        super().__init__()
        with paddle.no_grad():
            w, b = wrapper.folded_weight_and_bias()
            w = w.detach().clone()
            b = None if b is None else b.detach().clone()
        self.is_conv = isinstance(wrapper, QuantConv2D)
        # An INT8 Linear is deployed as a 1x1 convolution on [N, C, 1, 1]: Paddle 3.3.1's oneDNN INT8 fc
        # gives wrong outputs for some output columns (error grows with the column's weight range), its
        # INT8 convolution is exact. The weight [in, out] becomes [out, in, 1, 1] (ranges stay per output).
        self.linear_as_conv = bool(int8 and not self.is_conv)
        if self.linear_as_conv:
            w = w.transpose([1, 0]).reshape([w.shape[1], w.shape[0], 1, 1])
        self.int8_weight = bool(int8 and weight_storage == "int8")
        if self.int8_weight:
            # integers on the grid the simulation used; dequantize_linear restores w_hat = q * range / qmax
            axis = (0 if self.linear_as_conv else wrapper.weight_axis) if wrapper.per_channel else None
            r = per_channel_absmax(w, axis)
            shape = [1] * w.ndim
            if axis is not None:
                shape[axis] = -1
            qmax = float(qmax_for(wrapper.weight_bits))
            q = paddle.clip(paddle.round(w / paddle.clip(r.reshape(shape), min=1e-8) * qmax), -qmax, qmax)
            self.register_buffer("weight", q.astype("int8"), persistable=True)
        else:
            self.weight = self.create_parameter(w.shape, dtype="float32")
            self.weight.set_value(w)
        self.bias = None
        if b is not None:
            self.bias = self.create_parameter(b.shape, dtype="float32", is_bias=True)
            self.bias.set_value(b)
        if self.is_conv:
            self.conf = dict(stride=wrapper.stride, padding=wrapper.padding, dilation=wrapper.dilation,
                             groups=wrapper.groups, data_format=wrapper.data_format)
        self.act_qdq = self.w_qdq = None
        if int8:
            act_scale = wrapper.act_quant.scale.numpy()
            self.act_qdq = _qdq(act_scale, -1, wrapper.act_quant.bits)
            w_axis = (0 if self.linear_as_conv else wrapper.weight_axis) if wrapper.per_channel else None
            self.w_qdq = _qdq(per_channel_absmax(w, w_axis).numpy(), -1 if w_axis is None else w_axis,
                              wrapper.weight_bits)
            if self.int8_weight:  # stored integers: only the dequantize half
                self.w_qdq = self.w_qdq._dequanter

    def forward(self, x):
        w = self.weight
        if self.int8_weight and paddle.in_dynamic_mode():
            w = w.astype("float32")
        if self.linear_as_conv:
            lead = [-1] + [int(d) for d in x.shape[1:-1]]
            x = x.reshape([-1, x.shape[-1], 1, 1])
        if self.act_qdq is not None:
            x = self.act_qdq(x)
            w = self.w_qdq(w)
        if self.is_conv:
            if self.bias is None or paddle.in_dynamic_mode():
                return F.conv2d(x, w, self.bias, **self.conf)
            return _add_channel_bias(F.conv2d(x, w, None, **self.conf), self.bias)
        if self.linear_as_conv:
            return F.conv2d(x, w, self.bias).reshape(lead + [int(w.shape[0])])
        return F.linear(x, w, self.bias)


def _add_channel_bias(out, bias):
    """``out + bias`` along the channel axis, written into the legacy program as ONE
    ``elementwise_add(axis=1)`` on the persistable bias: the pattern oneDNN's conv+bias fusion (and
    the conv+ReLU, conv+residual-add fusions built on it) matches. ``F.conv2d(x, w, bias)`` writes
    ``reshape2(bias)`` + ``elementwise_add`` instead, which fuses nothing: separate adds and ReLUs
    after every convolution, in the FP32 twin as in the INT8 model (docs/benchmarks_full_stack.md)."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper("elementwise_add")
    result = helper.create_variable_for_type_inference(out.dtype)
    helper.append_op(type="elementwise_add", inputs={"X": [out], "Y": [bias]}, outputs={"Out": [result]},
                     attrs={"axis": 1})
    return result


def _check_exportable(network: nn.Layer) -> dict[str, QuantWrapper]:
    layers = quantized_layers(network)
    if not layers:
        raise RuntimeError(
            f"export_int8: {type(network).__name__} has no quantized layer; run quantize_qat (QAT) or "
            "calibrate (PTQ) first"
        )
    missing = [n for n, l in layers.items() if not l.act_quant.initialized]
    if missing:
        raise RuntimeError(
            f"export_int8: activation ranges were never observed for {missing}; train with QAT or run "
            "calibrate(...) on data before exporting"
        )
    low = [n for n, l in layers.items() if l.weight_bits != 8 or l.act_quant.bits != 8]
    if low:
        raise ValueError(f"export_int8 deploys 8-bit layers only; {low} use fewer bits (simulation-only mode)")
    return layers


def _deploy_copy(network: nn.Layer, int8: bool, weight_storage: str = "float") -> nn.Layer:
    net = copy.deepcopy(network)
    net.eval()
    for name, layer in list(net.named_sublayers()):
        if isinstance(layer, (QuantWrapper, FoldableBatchNorm)):
            if isinstance(layer, QuantWrapper):
                new = _Deployed(layer, int8, weight_storage)
            else:  # the BN lives folded inside its conv
                new = nn.Identity()
            parent = net
            *path, leaf = name.split(".")
            for part in path:
                parent = parent._sub_layers[part]
            parent._sub_layers[leaf] = new
    net.eval()
    return net


def _save_legacy(net: nn.Layer, path: str, input_shape: Sequence[int | None]) -> dict[str, str]:
    from paddle.pir_utils import DygraphOldIrGuard

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    spec = [paddle.static.InputSpec(list(input_shape), "float32", "x")]
    with DygraphOldIrGuard():
        static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
        paddle.jit.save(static, path)
    files = {"pdmodel": path + ".pdmodel", "pdiparams": path + ".pdiparams"}
    for kind, file in files.items():
        if not os.path.exists(file):
            raise RuntimeError(f"jit.save wrote no {kind} file at {file}")
    return files


WEIGHT_STORAGE = ("int8", "float")


def export_int8(network: nn.Layer, path: str, input_shape: Sequence[int | None], *,
                weight_storage: str = "int8") -> dict[str, str]:
    """Write ``PATH.pdmodel``/``PATH.pdiparams`` (legacy Paddle Inference format) for oneDNN INT8.

    Args:
        network: a network quantized by :func:`quantize_qat` (trained) or calibrated by PTQ.
        path: file prefix.
        input_shape: e.g. ``[None, 3, 32, 32]`` (None = any size along that axis).
        weight_storage: 'int8' stores quantized conv/linear weights as int8 integers (followed by a
            ``dequantize_linear``; the file shrinks about 4x); 'float' stores float32 weights that lie on
            the int8 grid followed by a quantize/dequantize pair.

    Returns: ``{'pdmodel': ..., 'pdiparams': ...}``. Raises RuntimeError before any QAT/calibration.
    """
    if weight_storage not in WEIGHT_STORAGE:
        raise ValueError(f"unknown weight_storage {weight_storage!r}; valid: {', '.join(WEIGHT_STORAGE)}")
    _check_exportable(network)
    return _save_legacy(_deploy_copy(network, True, weight_storage), path, input_shape)


def export_float(network: nn.Layer, path: str, input_shape: Sequence[int | None]) -> dict[str, str]:
    """The FP32 twin of :func:`export_int8`: same (BN-folded) weights, no quantization ops."""
    if quantized_layers(network):
        net = _deploy_copy(network, int8=False)
    else:
        net = copy.deepcopy(network)
        net.eval()
    return _save_legacy(net, path, input_shape)


def _subprocess_env(threads: int, verbose: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["FLAGS_enable_pir_api"] = "0"
    env["OMP_NUM_THREADS"] = str(threads)
    env["GLOG_minloglevel"] = "2"
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    else:
        env.pop("ONEDNN_VERBOSE", None)
    return env


def _run_worker(job: dict, threads: int, verbose: bool = False, timeout: float = 1800) -> str:
    with tempfile.TemporaryDirectory(prefix="slim-deploy-") as tmp:
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        proc = subprocess.run([sys.executable, _WORKER, job_path], env=_subprocess_env(threads, verbose),
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Paddle Inference worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


_PRIMITIVE = re.compile(r"onednn_verbose,(?:v1,)?(?:primitive,)?exec,cpu,(convolution|inner_product|matmul),[^,]*,[^,]*,src:(\w+)")


def onednn_kernel_census(prefix: str, sample: np.ndarray, int8: bool = True, threads: int = 1) -> dict[str, dict[str, int]]:
    """Run one batch with ONEDNN_VERBOSE=1 and count executed compute primitives by source data type.

    Returns e.g. ``{'convolution': {'s8': 1, 'u8': 20}, 'inner_product': {'u8': 1}}``.
    """
    with tempfile.TemporaryDirectory(prefix="slim-census-") as tmp:
        data = os.path.join(tmp, "x.npz")
        np.savez(data, x=np.asarray(sample, dtype=np.float32))
        job = {"models": {"m": [prefix + ".pdmodel", prefix + ".pdiparams", int8]}, "data": data,
               "eval_batch": len(sample), "threads": threads, "timing": None,
               "out": os.path.join(tmp, "o.npz"), "result": os.path.join(tmp, "r.json")}
        out = _run_worker(job, threads, verbose=True)
    census: dict[str, dict[str, int]] = {}
    for kind, dtype in _PRIMITIVE.findall(out):
        census.setdefault(kind, {}).setdefault(dtype, 0)
        census[kind][dtype] += 1
    return census


def _predict(network: nn.Layer, x: np.ndarray, batch: int = 64) -> np.ndarray:
    was_training = network.training
    network.eval()
    outs = []
    with paddle.no_grad():
        for i in range(0, len(x), batch):
            outs.append(network(paddle.to_tensor(x[i:i + batch])).numpy())
    if was_training:
        network.train()
    return np.concatenate(outs)


def verify_deployment(
    network: nn.Layer,
    path: str,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    input_shape: Sequence[int | None] | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 2,
    repeats: int = 30,
    warmup: int = 5,
    check_kernels: bool = True,
) -> dict:
    """Load the exported INT8 artifact with Paddle Inference and measure fidelity and speed.

    Compares three models on ``inputs`` (held-out images, float32 NCHW): the QAT/PTQ simulation
    (``network`` in eval mode, this process), the INT8 artifact at ``PATH`` and its FP32 twin
    (``PATH_fp32``, written here by :func:`export_float` when missing). Latency is the median
    over ``repeats`` runs per batch size after ``warmup``, FP32 and INT8 interleaved in one process with
    ``threads`` oneDNN threads. Returns a flat-ish dict for the compression card.
    """
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim < 2 or len(inputs) == 0:
        raise ValueError(f"verify_deployment needs a non-empty batch of inputs, got shape {inputs.shape}")
    for ext in (".pdmodel", ".pdiparams"):
        if not os.path.exists(path + ext):
            raise FileNotFoundError(f"no exported INT8 model at {path + ext}; call export_int8 first")
    fp32_path = path + "_fp32"
    if not os.path.exists(fp32_path + ".pdmodel"):
        export_float(network, fp32_path, input_shape or [None] + list(inputs.shape[1:]))
    sim = _predict(network, inputs)
    with tempfile.TemporaryDirectory(prefix="slim-verify-") as tmp:
        data = os.path.join(tmp, "x.npz")
        np.savez(data, x=inputs)
        job = {
            "models": {"fp32": [fp32_path + ".pdmodel", fp32_path + ".pdiparams", False],
                       "int8": [path + ".pdmodel", path + ".pdiparams", True]},
            "data": data, "eval_batch": 64, "threads": int(threads),
            "timing": {"batch_sizes": [int(b) for b in batch_sizes], "repeats": int(repeats), "warmup": int(warmup)}
            if batch_sizes else None,
            "out": os.path.join(tmp, "logits.npz"), "result": os.path.join(tmp, "result.json"),
        }
        _run_worker(job, int(threads))
        logits = dict(np.load(job["out"]))
        with open(job["result"]) as f:
            timing = json.load(f)
    int8, fp32 = logits["int8"], logits["fp32"]
    result: dict = {
        "images": int(len(inputs)),
        "agreement_int8_vs_sim": float((int8.argmax(1) == sim.argmax(1)).mean()),
        "agreement_int8_vs_fp32": float((int8.argmax(1) == fp32.argmax(1)).mean()),
        "max_abs_logit_diff_int8_vs_sim": float(np.abs(int8 - sim).max()),
        "pdiparams_bytes_int8": os.path.getsize(path + ".pdiparams"),
        "pdiparams_bytes_fp32": os.path.getsize(fp32_path + ".pdiparams"),
        "threads": int(threads),
    }
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        result.update(top1_sim=float((sim.argmax(1) == y).mean()), top1_int8=float((int8.argmax(1) == y).mean()),
                      top1_fp32=float((fp32.argmax(1) == y).mean()))
    lat = timing.get("latency_ms", {})
    for label in ("fp32", "int8"):
        for batch, ms in lat.get(label, {}).items():
            result[f"latency_ms_{label}_b{batch}"] = ms
    for batch in lat.get("int8", {}):
        result[f"speedup_b{batch}"] = lat["fp32"][batch] / lat["int8"][batch]
    if check_kernels:
        census = onednn_kernel_census(path, inputs[:2], int8=True, threads=1)
        result["onednn_int8_primitives"] = sum(n for kind in census.values() for dt, n in kind.items() if dt in ("s8", "u8"))
        result["onednn_fp32_primitives"] = sum(n for kind in census.values() for dt, n in kind.items() if dt not in ("s8", "u8"))
        result["onednn_census"] = census
    return result
