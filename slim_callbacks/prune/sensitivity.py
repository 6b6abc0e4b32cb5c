"""Sensitivity analysis, then per-layer ratios: PaddleSlim's "sensitivity, then prune", on a plain Layer.

1. :func:`sensitivity` prunes each selected layer *alone* at ratios 0.1 ... 0.9, calls a user
   ``evaluate(net) -> float`` (e.g. top-1 on a held-out loader; higher is better unless told otherwise)
   and restores the weights after each trial. The result is a table (dict and markdown), a PNG plot and,
   given a reporter, scalars ``sensitivity/<layer>`` (x axis: ratio in percent).
2. :func:`ratios_for_target` turns that table into per-layer ratios that reach a target - overall
   sparsity of the selected weights, or a MAC reduction for channel pruning - with the least predicted
   loss. The predicted loss of a layer at ratio r is its measured drop, interpolated linearly (made
   non-decreasing in r); layers are assumed independent. A bisection on one loss threshold gives every
   layer the largest ratio whose predicted loss stays under the threshold, and the smallest threshold
   that reaches the target wins: sensitive layers keep their weights, robust ones give more.

Apply the ratios with ``Masker(net, ...).update(ratios)`` (or :func:`slim_callbacks.prune.prune`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import paddle

from .masks import Masker, check_sparsity

__all__ = ["SensitivityResult", "ratios_for_target", "sensitivity"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SensitivityResult:
    """Metric of the network with one layer pruned at a time.

    Attributes:
        baseline: the metric with nothing pruned.
        ratios: the pruning ratios tried (fractions of zeros, or of channels for ``'channel'``).
        metrics: {parameter name: [metric at each ratio]}.
        sizes: {parameter name: number of weights}.
        macs: {parameter name: MACs per image of its layer} when computed (channel MAC targets), else {}.
        higher_is_better: True for accuracy-like metrics, False for losses.
        granularity: the granularity used for the trials.
    """

    baseline: float
    ratios: list[float]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    higher_is_better: bool = True
    granularity: str = "unstructured"

    def losses(self) -> dict[str, list[float]]:
        """{parameter name: [metric drop vs baseline at each ratio]} (positive = worse)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return {name: [sign * (self.baseline - v) for v in values] for name, values in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "ratios": list(self.ratios),
            "metrics": {k: list(v) for k, v in self.metrics.items()},
            "sizes": dict(self.sizes),
            "macs": dict(self.macs),
            "higher_is_better": self.higher_is_better,
            "granularity": self.granularity,
        }

    def to_markdown(self, digits: int = 4) -> str:
        """A table: one row per layer, one column per ratio, metric values (baseline in the header)."""
        head = "| layer | weights | " + " | ".join(f"{r:g}" for r in self.ratios) + " |"
        rule = "|---|---:|" + "---:|" * len(self.ratios)
        rows = [
            f"| {name} | {self.sizes.get(name, 0)} | " + " | ".join(f"{v:.{digits}f}" for v in values) + " |"
            for name, values in self.metrics.items()
        ]
        title = f"Baseline metric: {self.baseline:.{digits}f} ({self.granularity} pruning, one layer at a time)"
        return title + "\n\n" + "\n".join([head, rule, *rows]) + "\n"

    def plot(self, path: str | os.PathLike, title: str = "Pruning sensitivity") -> str:
        """Write a PNG (matplotlib, Agg backend): metric vs ratio, one line per layer. Returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        try:
            for name, values in self.metrics.items():
                ax.plot(self.ratios, values, marker="o", markersize=3, linewidth=1, label=name)
            ax.axhline(self.baseline, color="black", linestyle="--", linewidth=1, label="baseline")
            ax.set_xlabel("pruning ratio of the layer alone")
            ax.set_ylabel("metric")
            ax.set_title(title)
            if len(self.metrics) <= 24:
                ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            path = os.fspath(path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
        return path

    def report(self, reporter: Any, prefix: str = "sensitivity") -> None:
        """Scalars ``<prefix>/<layer>`` at step = ratio in percent, on a ``Reporter`` (or any object
        with ``scalar(tag, value, step)``)."""
        for name, values in self.metrics.items():
            reporter.scalar(f"{prefix}/{name}", self.baseline, 0)
            for ratio, value in zip(self.ratios, values):
                reporter.scalar(f"{prefix}/{name}", value, int(round(ratio * 100)))


def sensitivity(
    net: paddle.nn.Layer,
    evaluate: Callable[[paddle.nn.Layer], float],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    higher_is_better: bool = True,
    reporter: Any = None,
    input_shape: Sequence[int] | None = None,
    **masker_args: Any,
) -> SensitivityResult:
    """Prune each selected layer alone at each ratio, evaluate, restore; see the module docstring.

    Args:
        net: the trained network (its weights are restored after every trial).
        evaluate: ``evaluate(net) -> float``, e.g. top-1 accuracy on a held-out loader.
        ratios: fractions in [0, 1) to try (for ``granularity='nm'`` at most (M-N)/M).
        higher_is_better: False when ``evaluate`` returns a loss.
        reporter: optional ``Reporter`` (e.g. ``seam.reporter``) that receives the scalars.
        input_shape: batch-first input shape; given, per-layer MACs are measured (for MAC targets).
        masker_args: :class:`~slim_callbacks.prune.masks.Masker` arguments (params, layer_types,
            skip_first, skip_last, granularity ('global' is treated as 'unstructured' here), n, m, criterion,
            example_input).
    """
    ratios = [check_sparsity(r, "sensitivity ratio") for r in ratios]
    if not ratios:
        raise ValueError("sensitivity needs at least one ratio in [0, 1)")
    masker_args = dict(masker_args)
    if masker_args.get("granularity") == "global":
        masker_args["granularity"] = "unstructured"  # one layer at a time: a global threshold is the same
    masker_args["mask_gradients"] = False
    masker = Masker(net, **masker_args)
    baseline = float(evaluate(net))
    result = SensitivityResult(baseline, ratios, higher_is_better=higher_is_better, granularity=masker.granularity)
    if input_shape is not None:
        from ..report import count_macs

        _, per_layer = count_macs(net, input_shape)
        result.macs = {t.name: int(per_layer.get(t.layer_name, 0)) for t in masker.targets}
    for t in masker.targets:
        saved = {t.name: t.param.numpy().copy()}
        bias = getattr(t.layer, "bias", None)
        if isinstance(bias, paddle.Tensor):
            saved["bias"] = bias.numpy().copy()
        values = []
        try:
            for ratio in ratios:
                masker.clear()
                masker.update({t.name: ratio})
                values.append(float(evaluate(net)))
                t.param.set_value(saved[t.name])
                if "bias" in saved:
                    bias.set_value(saved["bias"])
        finally:
            t.param.set_value(saved[t.name])
            if "bias" in saved:
                bias.set_value(saved["bias"])
        result.metrics[t.name] = values
        result.sizes[t.name] = t.numel
    masker.clear()
    if reporter is not None:
        result.report(reporter)
    return result


def _monotone_curve(ratios: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.concatenate([[0.0], np.asarray(ratios, dtype=np.float64)])
    ys = np.concatenate([[0.0], np.asarray(losses, dtype=np.float64)])
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], np.maximum.accumulate(np.maximum(ys[order], 0.0))
    return xs, ys


def _ratio_under(xs: np.ndarray, ys: np.ndarray, threshold: float) -> float:
    """The largest ratio whose interpolated (non-decreasing) loss is <= threshold."""
    if ys[-1] <= threshold:
        return float(xs[-1])
    i = int(np.argmax(ys > threshold))  # first point above; i >= 1 since ys[0] = 0 <= threshold
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if y1 == y0:
        return float(x0)
    return float(x0 + (x1 - x0) * (threshold - y0) / (y1 - y0))


def ratios_for_target(
    result: SensitivityResult,
    target: float,
    by: str = "sparsity",
    tolerance: float = 1e-4,
) -> tuple[dict[str, float], float]:
    """Per-layer ratios reaching ``target`` with the least predicted loss; returns (ratios, predicted loss).

    Args:
        result: a :func:`sensitivity` result.
        target: the fraction in [0, 1) to remove: of all selected weights (``by='sparsity'``), or of the
            selected layers' MACs (``by='macs'``; needs ``result.macs``, i.e. ``input_shape=`` in
            :func:`sensitivity`; meaningful for channel pruning, where a layer's MACs shrink with its ratio).
        by: ``'sparsity'`` or ``'macs'``.
        tolerance: bisection stops when the threshold interval is this small (metric units).

    The predicted loss is the largest single-layer predicted drop at the chosen ratios. Raises a
    ValueError when even the largest tried ratio everywhere cannot reach ``target``.
    """
    target = check_sparsity(target, "target")
    if by not in ("sparsity", "macs"):
        raise ValueError(f"by must be 'sparsity' or 'macs', got {by!r}")
    if by == "macs" and not any(result.macs.values()):
        raise ValueError("by='macs' needs per-layer MACs: run sensitivity(..., input_shape=[1, C, H, W])")
    weights = {name: float(result.macs.get(name, 0) if by == "macs" else result.sizes[name]) for name in result.metrics}
    total = sum(weights.values())
    curves = {name: _monotone_curve(result.ratios, losses) for name, losses in result.losses().items()}

    def reached(threshold: float) -> tuple[float, dict[str, float]]:
        ratios = {name: _ratio_under(*curves[name], threshold) for name in curves}
        return sum(ratios[n] * weights[n] for n in ratios) / total, ratios

    hi = max(float(ys[-1]) for _, ys in curves.values())
    best, ratios = reached(hi)
    if best + 1e-12 < target:
        raise ValueError(
            f"target {by} {target} is out of reach: with every layer at its largest tried ratio "
            f"({max(result.ratios)}) the {by} removed is {best:.4f}; try larger ratios or more layers"
        )
    lo = 0.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if reached(mid)[0] >= target:
            hi = mid
        else:
            lo = mid
    achieved, ratios = reached(hi)
    # the bisection overshoots a little in steps; scale the ratios of the layers at the threshold down
    # so the target is met without waste
    if achieved > target:
        at_threshold = [n for n in ratios if 0 < ratios[n] < max(result.ratios)]
        extra = (achieved - target) * total
        movable = sum(ratios[n] * weights[n] for n in at_threshold)
        if movable > 0 and extra < movable:
            for n in at_threshold:
                ratios[n] *= 1 - extra / movable
    predicted = max(float(np.interp(ratios[n], *curves[n])) for n in ratios)
    return {n: float(r) for n, r in ratios.items()}, predicted
