"""The distillation core: teacher handling, feature pairs, adapters and the unweighted losses.

:class:`Distiller` works on two plain ``paddle.nn.Layer`` objects and knows nothing about hapi, so it
can drive a hand-written loop::

    distiller = Distiller(student, teacher, [("layer1", "layer1"), ("layer3", "layer3")])
    distiller.probe(example_batch)                   # builds adapters where shapes differ
    optimizer = paddle.optimizer.Momentum(0.1, parameters=student.parameters() + distiller.parameters())
    logits = student(x)                              # student taps capture features
    losses = distiller.losses(logits, x)             # {'pair0': ..., 'kd': ...} unweighted Tensors

The teacher is kept in eval mode and run under ``paddle.no_grad()`` on the inputs it is given (the
same, possibly mixed, batch the student saw); its parameters are never touched. It must not be a
sublayer of the student, so the student's checkpoints and exports never contain it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import paddle

from .adapters import ADAPTER_MODES, SPATIAL_MODES, FeatureAdapter, build_adapter
from .losses import feature_loss, get_feature_loss, kd_loss, needs_same_channels
from .taps import TapSet, resolve_layer

__all__ = ["Distiller", "load_teacher", "normalize_pairs"]

_DROPOUT = (paddle.nn.Dropout, paddle.nn.Dropout2D, paddle.nn.Dropout3D, paddle.nn.AlphaDropout)


def normalize_pairs(feature_pairs: Any) -> list[tuple[str, str]]:
    """``[(student_layer, teacher_layer), ...]`` from tuples/lists of two names (YAML gives lists)."""
    if feature_pairs is None:
        return []
    pairs = []
    for i, pair in enumerate(feature_pairs):
        if isinstance(pair, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(
                f"feature_pairs[{i}] = {pair!r} is not a (student_layer, teacher_layer) pair of names"
            )
        s, t = pair
        if not isinstance(s, str) or not isinstance(t, str):
            raise ValueError(f"feature_pairs[{i}] = {pair!r}: layer names must be strings")
        pairs.append((s, t))
    return pairs


def load_teacher(
    teacher: paddle.nn.Layer | paddle.Model | str,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    width: float = 1.0,
) -> paddle.nn.Layer:
    """The teacher network from a Layer, a ``paddle.Model`` (its ``.network``) or a parameter file.

    Args:
        teacher: a Layer, a Model, or a path to saved parameters (``PATH`` or ``PATH.pdparams``).
        arch: architecture name for ``trainers.models.build_model`` when ``teacher`` is a path.
        num_classes: teacher outputs when built from a path; None infers it from the last 2-D weight.
        width: channel multiplier for the built architecture.
    """
    if isinstance(teacher, paddle.Model):
        return teacher.network
    if isinstance(teacher, paddle.nn.Layer):
        return teacher
    if not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(
            "teacher must be a paddle.nn.Layer, a paddle.Model or a path to saved parameters, "
            f"got {type(teacher).__name__}"
        )
    path = os.fspath(teacher)
    file = path if path.endswith(".pdparams") else path + ".pdparams"
    if not os.path.exists(file):
        raise FileNotFoundError(f"teacher parameters not found: {file!r}")
    try:
        from trainers.models import MODELS, build_model
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "building a teacher from a parameter file needs trainers.models (install slim-callbacks with its "
            "trainers), or pass the teacher as a paddle.nn.Layer"
        ) from exc
    if arch is None:
        raise ValueError(f"teacher {file!r} is a parameter file: give teacher_arch, one of {sorted(MODELS)}")
    state = paddle.load(file)
    if num_classes is None:
        two_d = [v for v in state.values() if hasattr(v, "shape") and len(v.shape) == 2]
        if not two_d:
            raise ValueError(f"cannot infer the teacher's classes from {file!r}: give teacher_num_classes")
        num_classes = int(two_d[-1].shape[1])
    network = build_model(arch, num_classes=num_classes, width=width)
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
                if k in state and list(state[k].shape) != list(v.shape)]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"teacher file {file!r} does not match architecture {arch!r} (width {width}, {num_classes} classes): "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches (file vs built) {reshaped[:4]}"
        )
    network.set_state_dict(state)
    return network


class Distiller:
    """Feature-pair and soft-label distillation losses for one student/teacher pair.

    Args:
        student: the network being trained.
        teacher: the trained network to imitate (never updated).
        feature_pairs: ``[(student_layer, teacher_layer), ...]`` dotted sublayer names.
        feature_loss: one of ``'l2'`` (= ``'mse'``), ``'l2_sum'``, ``'l1'``, ``'cosine'``, ``'at'`` (see :mod:`.losses`).
        temperature: softmax temperature T > 0 of the soft-label KD loss.
        soft_labels: compute the KD loss (requires equal class counts).
        adapters: ``'auto'``, ``'always'`` or ``'none'`` (see :func:`.adapters.build_adapter`).
        spatial: ``'resize'`` or ``'error'`` when a pair's spatial sizes differ.
        adapter_bn: BatchNorm after each 1x1 adapter conv.
        on_new_adapter: called as ``fn(name, layer)`` for every adapter built (the callback registers it
            with the seam so it joins the optimizer and checkpoints).
    """

    def __init__(
        self,
        student: paddle.nn.Layer,
        teacher: paddle.nn.Layer,
        feature_pairs: list[tuple[str, str]] | None = None,
        *,
        feature_loss: str = "l2",
        temperature: float = 4.0,
        soft_labels: bool = True,
        adapters: str | None = "auto",
        spatial: str = "resize",
        adapter_bn: bool = True,
        on_new_adapter: Callable[[str, paddle.nn.Layer], None] | None = None,
    ) -> None:
        adapters = "none" if adapters is None else adapters
        if adapters not in ADAPTER_MODES:
            raise ValueError(f"adapters={adapters!r} is not valid; use one of {list(ADAPTER_MODES)}")
        if spatial not in SPATIAL_MODES:
            raise ValueError(f"spatial={spatial!r} is not valid; use one of {list(SPATIAL_MODES)}")
        get_feature_loss(feature_loss)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not isinstance(teacher, paddle.nn.Layer):
            raise TypeError(f"teacher must be a paddle.nn.Layer here, got {type(teacher).__name__}")
        if any(layer is teacher for layer in student.sublayers(include_self=True)):
            raise ValueError(
                "the teacher is a sublayer of the student: it would be trained and saved with it; keep it separate"
            )
        self.student = student
        self.teacher = teacher
        self.pairs = normalize_pairs(feature_pairs)
        self.feature_loss = feature_loss
        self.temperature = float(temperature)
        self.soft_labels = bool(soft_labels)
        self.adapter_mode = adapters
        self.spatial = spatial
        self.adapter_bn = adapter_bn
        self.on_new_adapter = on_new_adapter
        self.adapters: dict[str, FeatureAdapter] = {}
        self._adapters_built = False
        for s, t in self.pairs:  # fail fast, with close-name hints, before any hook is placed
            resolve_layer(student, s, what="student")
            resolve_layer(teacher, t, what="teacher")
        self._warn_dropout()
        self.teacher.eval()
        self.student_taps = TapSet(student, [s for s, _ in self.pairs], what="student")
        self.teacher_taps = TapSet(teacher, [t for _, t in self.pairs], what="teacher")

    # ------------------------------------------------------------------------------- naming
    @staticmethod
    def pair_name(index: int, pair: tuple[str, str]) -> str:
        """``'pair<i>:<student_layer>-<teacher_layer>'``, used for loss terms, adapters and logs."""
        return f"pair{index}:{pair[0]}-{pair[1]}"

    @property
    def pair_names(self) -> list[str]:
        return [self.pair_name(i, p) for i, p in enumerate(self.pairs)]

    # ------------------------------------------------------------------------------ teacher
    def _warn_dropout(self) -> None:
        if self.teacher.training and any(isinstance(layer, _DROPOUT) for layer in self.teacher.sublayers()):
            warnings.warn(
                "the teacher is in training mode and has Dropout layers: its targets would be random. "
                "Distiller switches it to eval mode and keeps it there.",
                UserWarning,
                stacklevel=3,
            )

    def teacher_forward(self, inputs: list) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
        """Teacher logits and tapped features for ``inputs`` (eval mode, no gradient)."""
        if self.teacher.training:
            self._warn_dropout()
            self.teacher.eval()
        inputs = [x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x) for x in inputs]
        with paddle.no_grad():
            out = self.teacher(*inputs)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out, self.teacher_taps.outputs() if self.pairs else {}

    # ------------------------------------------------------------------------------ adapters
    def _build_adapters(self, student_feats: dict, teacher_feats: dict) -> None:
        channels = needs_same_channels(self.feature_loss)
        for i, (s, t) in enumerate(self.pairs):
            name = self.pair_name(i, (s, t))
            adapter = build_adapter(
                list(student_feats[s].shape), list(teacher_feats[t].shape), pair=f"{s} -> {t}",
                mode=self.adapter_mode, spatial=self.spatial, batch_norm=self.adapter_bn,
                channels_must_match=channels,
            )
            if adapter is None:
                continue
            self.adapters[name] = adapter
            if self.on_new_adapter is not None:
                self.on_new_adapter(name, adapter)
        self._adapters_built = True

    def probe(self, inputs: list | paddle.Tensor) -> None:
        """One forward of both networks (student in eval mode, no gradient) to build the adapters now."""
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        was_training = self.student.training
        self.student.eval()
        try:
            with paddle.no_grad():
                self.student(*inputs)
            student_feats = self.student_taps.outputs() if self.pairs else {}
            _, teacher_feats = self.teacher_forward(list(inputs))
        finally:
            if was_training:
                self.student.train()
        if not self._adapters_built:
            self._build_adapters(student_feats, teacher_feats)

    def parameters(self) -> list[paddle.Tensor]:
        """The adapters' trainable parameters (add them to a hand-written loop's optimizer)."""
        return [p for a in self.adapters.values() for p in a.parameters()]

    # -------------------------------------------------------------------------------- losses
    def check_classes(self, student_logits: paddle.Tensor, teacher_logits: paddle.Tensor) -> None:
        s, t = int(student_logits.shape[-1]), int(teacher_logits.shape[-1])
        if s != t:
            raise ValueError(
                f"soft-label KD needs the same classes: the student has {s} outputs, the teacher {t}. "
                "Use a teacher trained on the same classes, or soft_label_weight=0 (features only)."
            )

    def losses(self, student_logits: paddle.Tensor, inputs: list | paddle.Tensor) -> dict[str, paddle.Tensor]:
        """Unweighted losses after the student's forward on ``inputs``: one per pair (by :attr:`pair_names`)
        and ``'kd'`` when soft labels are on. Runs the teacher on the same ``inputs``."""
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        student_feats = self.student_taps.outputs() if self.pairs else {}
        teacher_logits, teacher_feats = self.teacher_forward(inputs)
        if not self._adapters_built:
            self._build_adapters(student_feats, teacher_feats)
        result: dict[str, paddle.Tensor] = {}
        for i, (s, t) in enumerate(self.pairs):
            name = self.pair_name(i, (s, t))
            feat = student_feats[s]
            if name in self.adapters:
                feat = self.adapters[name](feat)
            try:
                result[name] = feature_loss(self.feature_loss, feat, teacher_feats[t])
            except ValueError as exc:
                raise ValueError(f"feature pair {s} -> {t}: {exc}") from None
        if self.soft_labels:
            if isinstance(student_logits, (list, tuple)):
                student_logits = student_logits[0]
            self.check_classes(student_logits, teacher_logits)
            result["kd"] = kd_loss(student_logits, teacher_logits, self.temperature)
        return result

    def remove(self) -> None:
        """Detach every feature tap (adapters stay usable)."""
        self.student_taps.remove()
        self.teacher_taps.remove()
