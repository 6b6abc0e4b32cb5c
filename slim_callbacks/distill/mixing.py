"""CutMix and MixUp as a pure batch mixer plus the seam batch transform that applies it.

Pure part (:class:`BatchMixer`, usable from a hand-written loop): given a batch ``x [N, C, H, W]`` it
draws a permutation ``perm`` and a mixing ratio, and returns the mixed batch with ``lam``, the weight
of the original labels (``1 - lam`` goes to ``labels[perm]``):

* MixUp (Zhang et al. 2018): ``lam ~ Beta(alpha, alpha)``, ``x' = lam * x + (1 - lam) * x[perm]``.
* CutMix (Yun et al. 2019): draw ``Beta(alpha, alpha)``, cut a box of side ratio ``sqrt(1 - draw)``
  centred uniformly in the image, clip it to the image, paste ``x[perm]`` inside it; ``lam`` is then
  recomputed as ``1 - box area / image area`` after clipping, so labels match the pixels exactly.
* ``mode='both'``: each batch uses CutMix with probability ``switch_prob``, else MixUp.
* ``prob``: probability that a batch is mixed at all (unmixed batches keep plain labels).

Randomness comes from the mixer's own ``numpy.random.Generator`` (seeded), never the global RNGs;
its state goes into checkpoints (``state_dict``/``set_state_dict``) so a resumed run mixes exactly as an
uninterrupted one would.

Seam part (:meth:`BatchMixer.apply`): replaces ``ctx.inputs[0]``, sets
``ctx.label_mixture = [(lam, labels), (1 - lam, labels[perm])]`` so the hard-label task loss is the
lambda-weighted mixture, keeps ``ctx.labels`` clean (training metrics are computed against the clean
labels of mixed images: read them as a rough signal, not as accuracy), and puts the draw in
``ctx.info['mixing']``. The seam transforms training batches only: evaluation is never mixed. A teacher
run inside a loss term reads ``ctx.inputs``, so it sees the same mixed images as the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

__all__ = ["MIX_MODES", "MixResult", "BatchMixer", "CutMix", "MixUp", "mixer_from_config", "cutmix_box"]

MIX_MODES = ("cutmix", "mixup", "both")


@dataclass
class MixResult:
    """One mixing draw: ``inputs`` mixed batch, ``lam`` weight of the original labels, ``perm`` partner
    indices, ``kind`` ('cutmix', 'mixup' or 'none'), ``box`` (y1, y2, x1, x2) for CutMix."""

    inputs: paddle.Tensor
    lam: float
    perm: np.ndarray
    kind: str
    box: tuple[int, int, int, int] | None = None


def cutmix_box(height: int, width: int, draw: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A CutMix box ``(y1, y2, x1, x2)`` (end-exclusive) for a Beta ``draw``, clipped to the image."""
    ratio = math.sqrt(max(0.0, 1.0 - draw))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, y2, x1, x2


def _check_alpha(name: str, alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"{name} must be a number > 0 (the Beta(alpha, alpha) parameter), got {alpha!r}")
    return float(alpha)


class BatchMixer:
    """CutMix / MixUp with its own seeded RNG.

    Args:
        mode: ``'cutmix'``, ``'mixup'`` or ``'both'``.
        alpha: Beta(alpha, alpha) parameter (> 0) for the chosen mode.
        cutmix_alpha, mixup_alpha: per-method alphas for ``mode='both'`` (default: ``alpha``).
        switch_prob: with ``mode='both'``, probability in [0, 1] that a batch uses CutMix.
        prob: probability in [0, 1] that a batch is mixed at all.
        seed: seed of the mixer's ``numpy.random.Generator``.
    """

    def __init__(
        self,
        mode: str = "cutmix",
        alpha: float = 1.0,
        *,
        cutmix_alpha: float | None = None,
        mixup_alpha: float | None = None,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        seed: int = 0,
    ) -> None:
        if mode not in MIX_MODES:
            raise ValueError(f"mixing mode {mode!r} is not valid; use one of {list(MIX_MODES)}")
        _check_alpha("alpha", alpha)
        self.mode = mode
        self.cutmix_alpha = _check_alpha("cutmix_alpha", alpha if cutmix_alpha is None else cutmix_alpha)
        self.mixup_alpha = _check_alpha("mixup_alpha", alpha if mixup_alpha is None else mixup_alpha)
        for name, p in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    # ------------------------------------------------------------------------------- pure part
    def _kind(self) -> str:
        if self.prob < 1.0 and self.rng.random() >= self.prob:
            return "none"
        if self.mode == "both":
            return "cutmix" if self.rng.random() < self.switch_prob else "mixup"
        return self.mode

    def mix(self, x: paddle.Tensor) -> MixResult:
        """Mix a batch ``x`` (``[N, C, H, W]`` for CutMix; any ``[N, ...]`` for MixUp)."""
        n = int(x.shape[0])
        kind = self._kind()
        perm = self.rng.permutation(n)
        if kind == "none":
            return MixResult(x, 1.0, perm, "none")
        partner = paddle.gather(x, paddle.to_tensor(perm, dtype="int64"), axis=0)
        if kind == "mixup":
            lam = float(self.rng.beta(self.mixup_alpha, self.mixup_alpha))
            return MixResult(x * lam + partner * (1.0 - lam), lam, perm, "mixup")
        if x.ndim != 4:
            raise ValueError(f"CutMix needs image batches [N, C, H, W], got shape {list(x.shape)}")
        height, width = int(x.shape[2]), int(x.shape[3])
        draw = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        y1, y2, x1, x2 = cutmix_box(height, width, draw, self.rng)
        lam = 1.0 - (y2 - y1) * (x2 - x1) / float(height * width)
        mask = np.zeros((1, 1, height, width), dtype="float32")
        mask[:, :, y1:y2, x1:x2] = 1.0
        mask_t = paddle.to_tensor(mask, dtype=x.dtype)
        return MixResult(x * (1.0 - mask_t) + partner * mask_t, lam, perm, "cutmix", (y1, y2, x1, x2))

    # ------------------------------------------------------------------------------- seam part
    def apply(self, ctx: Any) -> None:
        """Seam batch transform: mix ``ctx.inputs[0]``, set ``ctx.label_mixture``, keep ``ctx.labels`` clean."""
        if ctx.label_mixture:
            raise RuntimeError(
                "the batch is already mixed by another transform: use a single mixer (MixingCallback or "
                "DistillCallback(mixing=...), not both)"
            )
        result = self.mix(ctx.inputs[0])
        ctx.info["mixing"] = {"kind": result.kind, "lam": result.lam, "perm": result.perm, "box": result.box}
        if result.kind == "none":
            return
        ctx.inputs = [result.inputs] + list(ctx.inputs[1:])
        index = paddle.to_tensor(result.perm, dtype="int64")
        partners = [paddle.gather(y, index, axis=0) for y in ctx.labels]
        ctx.label_mixture = [(result.lam, list(ctx.labels)), (1.0 - result.lam, partners)]

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The RNG state and the settings (so a resume with different settings is caught)."""
        return {"rng": self.rng.bit_generator.state, "config": self.get_config()}

    def set_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def get_config(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "cutmix_alpha": self.cutmix_alpha, "mixup_alpha": self.mixup_alpha,
            "switch_prob": self.switch_prob, "prob": self.prob, "seed": self.seed,
        }


class CutMix(BatchMixer):
    """``BatchMixer('cutmix', alpha)``."""

    def __init__(self, alpha: float = 1.0, *, prob: float = 1.0, seed: int = 0) -> None:
        super().__init__("cutmix", alpha, prob=prob, seed=seed)


class MixUp(BatchMixer):
    """``BatchMixer('mixup', alpha)``."""

    def __init__(self, alpha: float = 0.2, *, prob: float = 1.0, seed: int = 0) -> None:
        super().__init__("mixup", alpha, prob=prob, seed=seed)


def mixer_from_config(spec: str | dict | BatchMixer) -> BatchMixer:
    """``'cutmix'``, ``'mixup'``, ``'both'``, a dict of :class:`BatchMixer` arguments (``{'mode': 'both',
    'cutmix_alpha': 1.0, 'mixup_alpha': 0.2, 'switch_prob': 0.5}``) or a mixer."""
    if isinstance(spec, BatchMixer):
        return spec
    if isinstance(spec, str):
        return BatchMixer(spec)
    if isinstance(spec, dict):
        valid = {"mode", "alpha", "cutmix_alpha", "mixup_alpha", "switch_prob", "prob", "seed"}
        unknown = sorted(set(spec) - valid)
        if unknown:
            raise ValueError(f"unknown mixing key(s) {unknown}; valid keys: {sorted(valid)}")
        spec = dict(spec)
        return BatchMixer(spec.pop("mode", "cutmix"), spec.pop("alpha", 1.0), **spec)
    raise TypeError(f"mixing must be 'cutmix', 'mixup', 'both', a dict or a BatchMixer, got {type(spec).__name__}")
