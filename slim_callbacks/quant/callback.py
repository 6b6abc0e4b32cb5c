"""QATCallback and PTQCallback: they decide *when*; qat.py / ptq.py do the work."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import paddle

from ..callback import SlimCallback
from ..seam import Seam, StepContext
from .observers import ACTIVATION_OBSERVERS, check_bits
from .qat import (
    LAYER_TYPES,
    fold_batch_norms,
    folded_pairs,
    freeze_observers,
    is_quantized,
    load_quant_state,
    quant_state,
    quantize_qat,
    quantized_layers,
)

__all__ = ["PTQCallback", "QATCallback"]


def _check_epoch(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer epoch or None, got {value!r}")
    return value


class QATCallback(SlimCallback):
    """Quantization-aware training inside ``model.fit``.

    At the first training batch of epoch ``start_epoch`` (epochs count from 0) the network is quantized
    in place (:func:`~slim_callbacks.quant.qat.quantize_qat`, tracing conv -> BN pairs on that batch).
    BN is folded into the quantized conv weights; training batches are normalized with batch statistics
    until epoch ``freeze_bn_epoch``, from which the running statistics freeze (None: never); from epoch ``freeze_observer_epoch`` activation ranges stop moving (None: never).
    Quantizer ranges and flags travel in checkpoints (seam state ``'qat'`` plus state-dict buffers).
    Reports histograms ``quant/activation_range`` and ``quant/weight_range/<layer>`` each epoch.

    Args:
        start_epoch: epoch (0-based) at which to insert fake quantization.
        weight_bits, activation_bits: 2..8 (8 deploys; 4-bit weights are experimental, simulation only).
        per_channel: per-output-channel symmetric weight ranges (default) or per tensor.
        activation_observer: 'ema_abs_max' or 'percentile'.
        moving_rate: EMA factor in [0, 1) per training batch.
        percentile: quantile in (0, 1] for the 'percentile' observer.
        layer_types: among 'Conv2D', 'Linear'.
        skip: regular expressions on dotted layer names to keep in float.
        fold_bn: fold BatchNorm into the preceding quantized conv.
        freeze_bn_epoch, freeze_observer_epoch: epochs (0-based) or None.
    """

    priority = 30  # after distillation taps (10) and pruning masks (20): quantizes what pruning left

    def __init__(
        self,
        start_epoch: int = 0,
        weight_bits: int = 8,
        activation_bits: int = 8,
        per_channel: bool = True,
        activation_observer: str = "ema_abs_max",
        moving_rate: float = 0.9,
        percentile: float = 0.9999,
        layer_types: Sequence[str] = ("Conv2D", "Linear"),
        skip: Sequence[str] = (),
        fold_bn: bool = True,
        freeze_bn_epoch: int | None = None,
        freeze_observer_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.start_epoch = _check_epoch(start_epoch, "start_epoch")
        self.freeze_bn_epoch = _check_epoch(freeze_bn_epoch, "freeze_bn_epoch")
        self.freeze_observer_epoch = _check_epoch(freeze_observer_epoch, "freeze_observer_epoch")
        if self.freeze_observer_epoch is not None and self.freeze_observer_epoch <= self.start_epoch:
            raise ValueError(
                f"freeze_observer_epoch={self.freeze_observer_epoch} must come after start_epoch={self.start_epoch}: "
                "activation ranges need at least one epoch of observation"
            )
        check_bits(weight_bits, "weight_bits")
        check_bits(activation_bits, "activation_bits")
        if activation_observer not in ACTIVATION_OBSERVERS:
            raise ValueError(f"unknown activation_observer {activation_observer!r}; valid: {', '.join(ACTIVATION_OBSERVERS)}")
        types = [layer_types] if isinstance(layer_types, str) else list(layer_types)
        bad = [t for t in types if t not in LAYER_TYPES]
        if bad or not types:
            raise ValueError(f"unknown layer_types {bad or types!r}; valid: {sorted(LAYER_TYPES)}")
        self.config = dict(
            weight_bits=int(weight_bits), activation_bits=int(activation_bits), per_channel=bool(per_channel),
            activation_observer=activation_observer, moving_rate=float(moving_rate), percentile=float(percentile),
            layer_types=types, skip=[skip] if isinstance(skip, str) else list(skip), fold_bn=bool(fold_bn),
        )
        self.epoch = 0

    # ------------------------------------------------------------------------------------ life cycle
    def setup(self, seam: Seam) -> None:
        epochs = self.total_epochs
        if epochs is not None and self.start_epoch >= int(epochs):
            raise ValueError(
                f"QATCallback(start_epoch={self.start_epoch}) would never run: fit has {epochs} epochs "
                f"(0..{int(epochs) - 1})"
            )
        seam.add_batch_transform("qat", self._maybe_quantize, priority=1000.0)
        seam.register_state("qat", self._get_state, self._set_state)

    def teardown(self, seam: Seam) -> None:
        seam.remove_batch_transform("qat")
        seam.unregister_state("qat")

    def shapes_fixed_from(self) -> float | None:
        return float(self.start_epoch)  # fake-quant layers (per-channel scales) from here on

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = int(epoch)
        if self.seam is not None and is_quantized(self.seam.network):
            self._apply_freezes(self.seam.network)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is None or not is_quantized(self.seam.network):
            return
        # data-parallel ranks observed different batches: agree on ranges and BN statistics (which the
        # folded weight scales depend on) before anything is saved or exported
        self.seam.sync_buffers()
        if not self.seam.reporter.active:
            return
        layers = quantized_layers(self.seam.network)
        self.report_histogram("quant/activation_range", np.concatenate(
            [l.act_quant.scale.numpy() for l in layers.values()]))
        for name, layer in layers.items():
            self.report_histogram(f"quant/weight_range/{name}", layer.weight_scale().numpy())

    # ------------------------------------------------------------------------------------- workers
    def _fold_now(self, epoch: int) -> bool:
        return self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch

    def _apply_freezes(self, network: paddle.nn.Layer) -> None:
        if self.config["fold_bn"] and self._fold_now(self.epoch):
            fold_batch_norms(network)
        if self.freeze_observer_epoch is not None and self.epoch >= self.freeze_observer_epoch:
            freeze_observers(network)

    def _maybe_quantize(self, ctx: StepContext) -> None:
        network = self.seam.network
        if self.epoch < self.start_epoch or is_quantized(network):
            return
        quantize_qat(network, example_inputs=ctx.inputs, fold_now=self._fold_now(self.epoch), **self.config)
        self._apply_freezes(network)
        self.report_text("quant/qat", f"quantized {len(quantized_layers(network))} layers at epoch {self.epoch}")

    def _get_state(self) -> dict:
        network = self.seam.network if self.seam is not None else None
        if network is None or not is_quantized(network):
            return {"quantized": False}
        return {"quantized": True, "bn_pairs": folded_pairs(network), "quant": quant_state(network)}

    def _set_state(self, state: dict) -> None:
        if not state or not state.get("quantized") or self.seam is None:
            return
        network = self.seam.network
        if not is_quantized(network):
            quantize_qat(network, bn_pairs=state.get("bn_pairs", []), fold_now=False, **self.config)
        load_quant_state(network, state["quant"])


class PTQCallback(SlimCallback):
    """Post-training quantization at train end: calibrate the trained network on ``batches`` batches.

    Args:
        data: a ``paddle.io.DataLoader``/iterable of batches (inputs first) or an array of inputs
            (required: hapi gives callbacks no access to the fit's loaders).
        algo: 'abs_max', 'avg', 'hist', 'mse' or 'KL' (activation ranges); weights are per-channel abs-max.
        batches: how many batches to calibrate on.
        Other options as in :func:`~slim_callbacks.quant.ptq.calibrate`.
    """

    priority = 30

    def __init__(self, data: Any, algo: str = "KL", batches: int = 10, weight_bits: int = 8,
                 activation_bits: int = 8, per_channel: bool = True, hist_percent: float = 0.9999,
                 bins: int = 2048, layer_types: Sequence[str] = ("Conv2D", "Linear"), skip: Sequence[str] = (),
                 fold_bn: bool = True) -> None:
        super().__init__()
        from .ptq import ALGOS

        if algo not in ALGOS:
            raise ValueError(f"unknown PTQ algo {algo!r}; valid: {', '.join(ALGOS)}")
        check_bits(weight_bits, "weight_bits")
        check_bits(activation_bits, "activation_bits")
        if data is None:
            raise ValueError("PTQCallback needs calibration data (a DataLoader, an iterable of batches or an array)")
        self.data = data
        self.options = dict(algo=algo, batches=int(batches), weight_bits=int(weight_bits),
                            activation_bits=int(activation_bits), per_channel=bool(per_channel),
                            hist_percent=float(hist_percent), bins=int(bins), layer_types=list(layer_types),
                            skip=list(skip), fold_bn=bool(fold_bn))
        self.ranges: dict[str, float] = {}

    def shapes_fixed_from(self) -> float | None:
        return float(self.total_epochs or 0)  # calibrates at train end

    def teardown(self, seam: Seam) -> None:
        from .ptq import calibrate

        self.ranges = calibrate(seam.network, self.data, **self.options)
        self.report_histogram("quant/activation_range", np.asarray(list(self.ranges.values()), dtype=np.float32))
        self.report_text("quant/ptq", f"calibrated {len(self.ranges)} layers with {self.options['algo']}")
