"""Adapters: map a student feature onto the teacher feature's shape before a feature loss.

* Channels differ: a 1x1 ``Conv2D`` (+ ``BatchNorm2D`` by default) from the student's to the teacher's
  channels (FitNets' regressor). For flat features ``[N, C]`` a ``Linear`` does the same job.
* Spatial sizes differ (``spatial='resize'``): the student map is resized to the teacher's size with
  adaptive average pooling when it is larger and bilinear interpolation when it is smaller.
  ``spatial='error'`` refuses with a message naming the pair and both shapes.

Adapters are trainable and live outside the student network (so the exported student never carries
them). The seam saves their weights in ``PATH.slim`` and keys their optimizer state in ``PATH.pdopt``
by structured name (``extra:<name>.<param>``), so runtime parameter names do not matter.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

__all__ = ["SPATIAL_MODES", "ADAPTER_MODES", "FeatureAdapter", "build_adapter", "resize_to"]

SPATIAL_MODES = ("resize", "error")
ADAPTER_MODES = ("auto", "always", "none")


def resize_to(feature: paddle.Tensor, size: list[int]) -> paddle.Tensor:
    """Resize ``[N, C, H, W]`` to ``size = [H', W']``: adaptive average pool to shrink, bilinear to grow."""
    h, w = int(feature.shape[2]), int(feature.shape[3])
    if [h, w] == list(size):
        return feature
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=list(size), mode="bilinear", align_corners=False)


class FeatureAdapter(paddle.nn.Layer):
    """Student feature -> teacher feature shape (channel projection and/or spatial resize).

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        spatial_size: teacher ``[H, W]`` to resize to, or None to keep the student's size.
        project: add the 1x1 projection (False when only the spatial size differs).
        batch_norm: follow the projection with a BatchNorm (2-D maps only).
        flat: the features are ``[N, C]`` (use a Linear) instead of ``[N, C, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_size: list[int] | None = None,
        *,
        project: bool = True,
        batch_norm: bool = True,
        flat: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_size = list(spatial_size) if spatial_size else None
        self.flat = flat
        self.proj = None
        self.bn = None
        if project:
            if flat:
                self.proj = paddle.nn.Linear(in_channels, out_channels)
            else:
                self.proj = paddle.nn.Conv2D(in_channels, out_channels, 1, bias_attr=not batch_norm)
                if batch_norm:
                    self.bn = paddle.nn.BatchNorm2D(out_channels)

    def forward(self, feature: paddle.Tensor) -> paddle.Tensor:
        channels = int(feature.shape[1])
        if channels != self.in_channels:
            raise ValueError(
                f"adapter expects {self.in_channels} student channels but the feature has {channels} "
                f"(shape {list(feature.shape)}): did the student change shape (physical pruning) after the "
                "adapter was built?"
            )
        if self.spatial_size is not None:
            feature = resize_to(feature, self.spatial_size)
        if self.proj is not None:
            feature = self.proj(feature)
        if self.bn is not None:
            feature = self.bn(feature)
        return feature


def build_adapter(
    student_shape: list[int],
    teacher_shape: list[int],
    *,
    pair: str,
    mode: str = "auto",
    spatial: str = "resize",
    batch_norm: bool = True,
    channels_must_match: bool = True,
) -> FeatureAdapter | None:
    """The adapter one pair needs, or None when the shapes already agree (and ``mode != 'always'``).

    Args:
        student_shape, teacher_shape: feature shapes from a probe forward.
        pair: ``'student_layer->teacher_layer'``, used in errors.
        mode: ``'auto'`` (build where needed), ``'always'`` (a projection for every pair),
            ``'none'`` (never; mismatching shapes raise).
        spatial: ``'resize'`` or ``'error'`` when the spatial sizes differ.
        batch_norm: BN after the 1x1 conv.
        channels_must_match: False for losses that compare no channels (attention transfer).

    Raises:
        ValueError: naming the pair and both shapes when they cannot be aligned.
    """
    if mode not in ADAPTER_MODES:
        raise ValueError(f"adapters={mode!r} is not valid; use one of {list(ADAPTER_MODES)}")
    if spatial not in SPATIAL_MODES:
        raise ValueError(f"spatial={spatial!r} is not valid; use one of {list(SPATIAL_MODES)}")
    s, t = list(student_shape), list(teacher_shape)
    if len(s) != len(t) or len(s) not in (2, 4) or s[0] != t[0]:
        raise ValueError(
            f"feature pair {pair}: cannot align student {s} with teacher {t} (need [N, C] or [N, C, H, W] "
            "on both sides with the same batch size)"
        )
    flat = len(s) == 2
    channels_differ = s[1] != t[1] and channels_must_match
    spatial_differs = not flat and s[2:] != t[2:]
    if spatial_differs and spatial == "error":
        raise ValueError(
            f"feature pair {pair}: spatial sizes differ (student {s[2:]} vs teacher {t[2:]}) and spatial='error'; "
            "pick layers at the same resolution or use spatial='resize'"
        )
    project = channels_differ or (mode == "always" and channels_must_match)
    if channels_differ and mode == "none":
        raise ValueError(
            f"feature pair {pair}: channels differ (student {s[1]} vs teacher {t[1]}) and adapters='none'; "
            "use adapters='auto' or a loss that ignores channels ('at')"
        )
    if not project and not spatial_differs:
        return None
    return FeatureAdapter(
        s[1], t[1] if project else s[1], t[2:] if spatial_differs else None,
        project=project, batch_norm=batch_norm, flat=flat,
    )
