"""Distillation losses: feature-map distances and soft-label knowledge distillation.

Every function takes a student tensor and a teacher tensor of the same shape ``[N, ...]`` (after any
adapter) and returns a scalar Tensor. The teacher tensor is treated as a constant target (the caller
computes it under ``no_grad``).

Feature losses (``FEATURE_LOSSES``):

* ``'l2'`` (alias ``'mse'``): mean of squared differences over every element, as PaddleSlim's
  ``l2_loss`` (the seed's) computes it; independent of the feature size, so weight 1 is a sane start.
* ``'l2_sum'``: sum of squared differences divided by the batch size N (FitNets-style). It grows with
  the feature size (a 64x8x8 map: thousands of times ``'l2'``), so its pair weight must be small
  (about 1 / elements per sample); at weight 1 it makes training diverge.
* ``'l1'``: mean absolute difference over every element.
* ``'cosine'``: mean over the batch of ``1 - cos(s_i, t_i)`` with each sample's feature flattened.
* ``'at'``: attention transfer (Zagoruyko & Komodakis, ICLR 2017): the attention map
  ``Q = mean_c(F^2)`` flattened and L2-normalized per sample; loss = mean of ``(Q_s - Q_t)^2`` over
  batch and positions (as in the authors' code). Channel counts may differ; spatial sizes must match.

Soft labels: :func:`kd_loss` = ``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over the batch
(Hinton et al. 2015; the ``T^2`` keeps gradient magnitudes comparable across temperatures).
"""

from __future__ import annotations

from typing import Callable

import paddle
import paddle.nn.functional as F

__all__ = ["FEATURE_LOSSES", "feature_loss", "get_feature_loss", "kd_loss", "attention_map", "needs_same_channels"]


def _flat(x: paddle.Tensor) -> paddle.Tensor:
    return x.reshape([x.shape[0], -1])


def l2_sum_loss(student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """Sum of squared differences / batch size (FitNets)."""
    return ((student - teacher) ** 2).sum() / student.shape[0]


def mse_loss(student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """Mean of squared differences over all elements (``'l2'`` and ``'mse'``)."""
    return ((student - teacher) ** 2).mean()


def l1_loss(student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """Mean absolute difference over all elements."""
    return (student - teacher).abs().mean()


def cosine_loss(student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """Mean over the batch of 1 - cosine similarity of the flattened per-sample features."""
    return (1.0 - F.cosine_similarity(_flat(student), _flat(teacher), axis=1, eps=1e-8)).mean()


def attention_map(feature: paddle.Tensor) -> paddle.Tensor:
    """``normalize(mean_c(F^2))`` flattened per sample: ``[N, C, H, W] -> [N, H*W]`` (unit L2 norm)."""
    if feature.ndim < 3:
        raise ValueError(f"attention transfer needs feature maps [N, C, H, W], got shape {list(feature.shape)}")
    return F.normalize(_flat((feature**2).mean(axis=1)), p=2, axis=1)


def at_loss(student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """Attention transfer: mean of squared differences of the normalized attention maps."""
    return ((attention_map(student) - attention_map(teacher)) ** 2).mean()


FEATURE_LOSSES: dict[str, Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]] = {
    "l2": mse_loss,
    "mse": mse_loss,
    "l2_sum": l2_sum_loss,
    "l1": l1_loss,
    "cosine": cosine_loss,
    "at": at_loss,
}


def needs_same_channels(name: str) -> bool:
    """Whether the loss compares features channel by channel (all but attention transfer)."""
    return name != "at"


def get_feature_loss(name: str) -> Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]:
    """The loss function called ``name``; a ValueError lists the valid names."""
    if name not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature loss {name!r}; valid names: {sorted(FEATURE_LOSSES)}")
    return FEATURE_LOSSES[name]


def feature_loss(name: str, student: paddle.Tensor, teacher: paddle.Tensor) -> paddle.Tensor:
    """``FEATURE_LOSSES[name](student, teacher)`` with a shape check that names both shapes."""
    fn = get_feature_loss(name)
    s_shape, t_shape = list(student.shape), list(teacher.shape)
    if name == "at":
        if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
            raise ValueError(f"attention transfer needs equal batch and spatial sizes, got {s_shape} vs {t_shape}")
    elif s_shape != t_shape:
        raise ValueError(f"feature loss {name!r} needs equal shapes, got student {s_shape} vs teacher {t_shape}")
    return fn(student, teacher)


def kd_loss(student_logits: paddle.Tensor, teacher_logits: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """Soft-label KD: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, summed over classes, mean over the batch.

    Args:
        student_logits, teacher_logits: ``[N, classes]`` raw scores (equal class counts).
        temperature: T > 0; higher T gives softer targets.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if list(student_logits.shape) != list(teacher_logits.shape):
        raise ValueError(
            f"soft-label KD needs student and teacher logits of equal shape, got {list(student_logits.shape)} "
            f"vs {list(teacher_logits.shape)}"
        )
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, axis=-1)
    log_p_t = F.log_softmax(teacher_logits / t, axis=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(axis=-1).mean()
    return kl * (t * t)
