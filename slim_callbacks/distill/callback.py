"""hapi callbacks: :class:`DistillCallback` (teacher -> student) and :class:`MixingCallback` (CutMix/MixUp alone).

Both are thin: the work lives in :class:`~.distiller.Distiller` and :class:`~.mixing.BatchMixer`; the
callbacks register them with the model's seam for the length of one ``fit``.

One training step with ``DistillCallback(..., mixing='cutmix')``:

1. seam batch transform ``distill/mixing``: CutMix/MixUp replaces ``ctx.inputs`` and sets
   ``ctx.label_mixture``; ``ctx.labels`` stay clean (metrics use them).
2. hapi runs the student forward on the mixed batch; student feature taps capture their layers.
3. seam loss terms (each a separate entry of ``logs['loss']``, after the task loss):
   ``distill/pair<i>:<s>-<t>`` = weight_i * feature loss (the first of them also runs the teacher
   under ``no_grad`` on ``ctx.inputs``, i.e. the same mixed batch, and caches its outputs for the step),
   ``distill/kd`` = soft_label_weight * KD(teacher || student), and ``distill/task_scale`` =
   ``(task_loss_weight - 1) * task loss``: the seam always adds the task loss with weight 1, so this
   extra term makes the total ``task_loss_weight * task loss``. ``logs['loss'][0]`` stays the unscaled
   task loss (on the mixed labels).
4. backward + optimizer step over the student's and the adapters' parameters.

Every weight is a number, a :class:`~slim_callbacks.schedule.Schedule` or a schedule config dict,
evaluated at the current optimizer step (e.g. a KD weight warm-up). With a reporter sink (VisualDL)
the unweighted losses and the weights are reported per step under ``distill/loss/*`` and
``distill/weight/*``.
"""

from __future__ import annotations

import paddle

from ..callback import SlimCallback
from ..schedule import ConstantSchedule, Schedule, schedule_from_config
from ..seam import Seam, StepContext
from .adapters import ADAPTER_MODES, SPATIAL_MODES
from .distiller import Distiller, load_teacher, normalize_pairs
from .losses import get_feature_loss
from .mixing import BatchMixer, mixer_from_config

__all__ = ["DistillCallback", "MixingCallback", "as_schedule"]

MIXING_PRIORITY = -100.0  #: mixing runs before other batch transforms, so all of them see the mixed batch


def as_schedule(value: float | Schedule | dict, what: str) -> Schedule:
    """A number (constant), a Schedule, or a schedule config dict -> Schedule. Errors name ``what``."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict):
        try:
            return schedule_from_config(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, a Schedule or a schedule config dict, got {value!r}")
    return ConstantSchedule(initial=float(value), final=float(value))


def _is_constant(schedule: Schedule, value: float) -> bool:
    return isinstance(schedule, ConstantSchedule) and schedule.initial == value and schedule.final == value


class MixingCallback(SlimCallback):
    """CutMix / MixUp on training batches, with or without a teacher.

    Args:
        mixing: ``'cutmix'``, ``'mixup'``, ``'both'``, a dict of :class:`~.mixing.BatchMixer` arguments
            (``{'mode': 'both', 'cutmix_alpha': 1.0, 'mixup_alpha': 0.2, 'switch_prob': 0.5, 'seed': 0}``)
            or a BatchMixer.
        alpha: Beta(alpha, alpha) parameter (> 0) when ``mixing`` is a mode name.
        seed: seed of the mixer's own RNG when ``mixing`` is a mode name.

    The hard-label task loss uses the lambda-weighted mixed labels; ``ctx.labels`` and therefore the
    training metrics use the clean labels of the mixed images (a rough signal); evaluation is never mixed.
    The RNG state is saved in checkpoints (``PATH.slim``) under ``'<name>'``.
    """

    #: order contract (slim_callbacks.callback): batch transforms exist before anything swaps layers
    priority = 10

    def __init__(self, mixing: str | dict | BatchMixer = "cutmix", alpha: float = 1.0, seed: int = 0,
                 name: str = "mixing") -> None:
        super().__init__()
        if isinstance(mixing, str):
            mixing = {"mode": mixing, "alpha": alpha, "seed": seed}
        self.mixer = mixer_from_config(mixing)
        self.name = name

    def setup(self, seam: Seam) -> None:
        seam.add_batch_transform(self.name, self.mixer.apply, priority=MIXING_PRIORITY)
        seam.register_state(self.name, self.mixer.state_dict, self.mixer.set_state_dict)

    def teardown(self, seam: Seam) -> None:
        seam.remove_batch_transform(self.name)
        seam.unregister_state(self.name)


class DistillCallback(SlimCallback):
    """Distil a teacher into the model being fitted: feature pairs, soft labels, optional CutMix/MixUp.

    Args:
        teacher: a ``paddle.nn.Layer``, a ``paddle.Model`` (its network is used) or a path to saved
            parameters (``PATH``/``PATH.pdparams``) with ``teacher_arch``. Kept in eval mode under
            ``no_grad``; never updated and never saved with the student.
        feature_pairs: ``[(student_layer, teacher_layer), ...]`` dotted sublayer names; a bad name raises
            a KeyError listing the closest names.
        feature_loss: ``'l2'`` (= ``'mse'``, mean of squares, as PaddleSlim), ``'l2_sum'`` (FitNets sum / batch), ``'l1'``, ``'cosine'`` or ``'at'``
            (attention transfer).
        pair_weights: one weight per pair (number, Schedule or config dict); None = 1.0 each.
        soft_label_weight: weight of the KD loss ``KL(teacher_T || student_T) * T^2``; 0 turns it off.
        temperature: KD softmax temperature T > 0.
        task_loss_weight: total weight of the hard-label task loss (1 = unchanged, 0 = pure distillation).
        adapters: ``'auto'`` (1x1 conv + BN where channels differ, built at the first training step from
            the real feature shapes), ``'always'``, or ``'none'``/None.
        spatial: ``'resize'`` (pool/interpolate the student map to the teacher's size) or ``'error'``.
        adapter_bn: BatchNorm after each adapter conv.
        mixing: None, ``'cutmix'``, ``'mixup'``, ``'both'`` or a dict of BatchMixer arguments.
        teacher_arch, teacher_num_classes, teacher_width: build the teacher from a parameter file.
        log_freq: report unweighted losses and weights every this many optimizer steps (when a sink listens).

    Weights are evaluated at the current optimizer step (units of the schedule: epochs or steps).
    Adapters are registered with the seam: they join the optimizer, their weights go into ``PATH.slim``
    and their optimizer state into ``PATH.pdopt``; the exported student does not contain them.
    """

    #: order contract (slim_callbacks.callback): taps are placed before QAT/pruning act on the network
    priority = 10

    def __init__(
        self,
        teacher: paddle.nn.Layer | paddle.Model | str,
        feature_pairs: list | None = None,
        feature_loss: str = "l2",
        pair_weights: list | None = None,
        soft_label_weight: float | Schedule | dict = 0.0,
        temperature: float = 4.0,
        task_loss_weight: float | Schedule | dict = 1.0,
        adapters: str | None = "auto",
        spatial: str = "resize",
        adapter_bn: bool = True,
        mixing: str | dict | BatchMixer | None = None,
        teacher_arch: str | None = None,
        teacher_num_classes: int | None = None,
        teacher_width: float = 1.0,
        log_freq: int = 1,
        name: str = "distill",
    ) -> None:
        super().__init__()
        self.pairs = normalize_pairs(feature_pairs)
        if pair_weights is None:
            pair_weights = [1.0] * len(self.pairs)
        if not isinstance(pair_weights, (list, tuple)) or len(pair_weights) != len(self.pairs):
            raise ValueError(
                f"pair_weights needs one weight per feature pair ({len(self.pairs)}), got {pair_weights!r}"
            )
        self.pair_weights = [as_schedule(w, f"pair_weights[{i}]") for i, w in enumerate(pair_weights)]
        self.soft_label_weight = as_schedule(soft_label_weight, "soft_label_weight")
        self.task_loss_weight = as_schedule(task_loss_weight, "task_loss_weight")
        self.soft_labels = not _is_constant(self.soft_label_weight, 0.0)
        if not self.pairs and not self.soft_labels:
            raise ValueError("DistillCallback needs feature_pairs or a soft_label_weight other than 0")
        if log_freq < 1:
            raise ValueError(f"log_freq must be >= 1 optimizer step, got {log_freq}")
        # validate everything that needs no student yet (loss name, temperature, modes) right away
        get_feature_loss(feature_loss)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if (adapters or "none") not in ADAPTER_MODES:
            raise ValueError(f"adapters={adapters!r} is not valid; use one of {list(ADAPTER_MODES)}")
        if spatial not in SPATIAL_MODES:
            raise ValueError(f"spatial={spatial!r} is not valid; use one of {list(SPATIAL_MODES)}")
        self.teacher = load_teacher(teacher, teacher_arch, num_classes=teacher_num_classes, width=teacher_width)
        self.options = dict(feature_loss=feature_loss, temperature=temperature, adapters=adapters,
                            spatial=spatial, adapter_bn=adapter_bn)
        self.mixer = mixer_from_config(mixing) if mixing is not None else None
        self.log_freq = log_freq
        self.name = name
        self.distiller: Distiller | None = None
        self._cache: tuple[StepContext, dict[str, paddle.Tensor]] | None = None

    # -------------------------------------------------------------------------------- names
    def term_name(self, key: str) -> str:
        return f"{self.name}/{key}"

    # ------------------------------------------------------------------------------ life cycle
    def setup(self, seam: Seam) -> None:
        self.distiller = Distiller(
            seam.network, self.teacher, self.pairs, soft_labels=self.soft_labels,
            on_new_adapter=lambda name, layer: self._register_adapter(seam, name, layer), **self.options,
        )
        if self.mixer is not None:
            seam.add_batch_transform(self.term_name("mixing"), self.mixer.apply, priority=MIXING_PRIORITY)
            seam.register_state(self.term_name("mixing"), self.mixer.state_dict, self.mixer.set_state_dict)
        for i, pair_name in enumerate(self.distiller.pair_names):
            seam.add_loss_term(self.term_name(pair_name), self._term(pair_name, self.pair_weights[i]))
        if self.soft_labels:
            seam.add_loss_term(self.term_name("kd"), self._term("kd", self.soft_label_weight))
        if not _is_constant(self.task_loss_weight, 1.0):
            seam.add_loss_term(self.term_name("task_scale"), self._task_scale_term)
        # hapi clears the network's gradients after each update, not those of layers outside it

    def teardown(self, seam: Seam) -> None:
        for key in self.distiller.pair_names + ["kd", "task_scale", "mixing"]:
            seam.remove_loss_term(self.term_name(key))
        seam.remove_batch_transform(self.term_name("mixing"))
        seam.unregister_state(self.term_name("mixing"))
        # adapters stay registered until the seam is released, so a model.save after fit still has them
        self.distiller.remove()
        self._cache = None

    def channel_readers(self) -> dict[str, str]:
        return {s: f"DistillCallback feature pair ({s!r}, {t!r}) reads its channels" for s, t in self.pairs}

    def _register_adapter(self, seam: Seam, name: str, layer: paddle.nn.Layer) -> None:
        full = self.term_name(name)
        previous = seam.extra_layers.get(full)
        if previous is not None:  # a second fit on a seam that outlived the first: keep what was learned
            layer.set_state_dict(previous.state_dict())
            seam.unregister_layer(full)
        seam.register_layer(full, layer)

    @property
    def adapters(self) -> dict[str, paddle.nn.Layer]:
        """Adapters built so far, by pair name."""
        return dict(self.distiller.adapters) if self.distiller else {}

    # ---------------------------------------------------------------------------------- terms
    def _step_losses(self, ctx: StepContext) -> dict[str, paddle.Tensor]:
        """Unweighted losses of this step, computed once (teacher forward on ``ctx.inputs``) and cached."""
        if self._cache is None or self._cache[0] is not ctx:
            self._cache = (ctx, self.distiller.losses(ctx.outputs[0], ctx.inputs))
            if self._should_report():
                self._report(ctx, self._cache[1])
        return self._cache[1]

    def _report(self, ctx: StepContext, losses: dict[str, paddle.Tensor]) -> None:
        """Unweighted losses and the weights in use at this step (``distill/loss/*``, ``distill/weight/*``)."""
        weights = dict(zip(self.distiller.pair_names, self.pair_weights))
        weights.update(kd=self.soft_label_weight, task=self.task_loss_weight)
        losses = dict(losses, task=sum(float(t) for t in ctx.task_loss))
        for key, value in losses.items():
            self.report_scalar(f"{self.name}/loss/{key}", float(value))
            self.report_scalar(f"{self.name}/weight/{key}", self._weight(weights[key]))

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        self._cache = None  # drop this step's teacher outputs and the context they hang on

    def _weight(self, schedule: Schedule) -> float:
        return schedule.value_at(self.global_step, self.steps_per_epoch)

    def _should_report(self) -> bool:
        return self.seam is not None and self.seam.reporter.active and self.global_step % self.log_freq == 0

    def _term(self, key: str, schedule: Schedule):
        def term(ctx: StepContext) -> paddle.Tensor:
            return self._step_losses(ctx)[key] * self._weight(schedule)

        return term

    def _task_scale_term(self, ctx: StepContext) -> paddle.Tensor:
        task = paddle.add_n(list(ctx.task_loss)) if len(ctx.task_loss) > 1 else ctx.task_loss[0]
        return task * (self._weight(self.task_loss_weight) - 1.0)
