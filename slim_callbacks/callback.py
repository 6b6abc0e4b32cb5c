"""The base of every slim callback, and the order contract that makes their list order irrelevant.

hapi calls callbacks in the order the user listed them. Compression steps do not commute (prune masks
computed before or after BN folding differ; a distillation tap must be placed before QAT swaps the
layer), so slim callbacks do not act in list order. Instead every :class:`SlimCallback` joins the
model's *conductor* at train begin, and each epoch-level event runs once for all members in ascending
:attr:`SlimCallback.priority` (ties: class name, then list order), whichever member hapi calls first:

==========  ===================================  =====================================================
 priority    who                                  why there
==========  ===================================  =====================================================
 10          DistillCallback, MixingCallback      taps and batch transforms exist before anything swaps
 20          GradualPruneCallback                 masks are decided on the float weights
 30          QATCallback, PTQCallback             quantizes what pruning left (zeros stay zero)
 90          SlimVisualDL                         logs what everyone reported this epoch
 100         the trainer's CheckpointCallback     saves the state everyone just updated
==========  ===================================  =====================================================

Events: ``setup(seam)`` (all members, before the first epoch), ``on_epoch_begin``, ``on_epoch_end``,
and ``teardown(seam)`` (reverse order, at train end). Subclasses write ``on_epoch_begin`` /
``on_epoch_end`` as in any hapi callback; the base class reroutes them through the conductor, which
passes the *absolute* epoch: a run resumed after 3 epochs starts at epoch 3, not 0 (see
:attr:`SlimCallback.total_epochs` for the run's length). Per-batch
work goes through the seam (batch transforms, loss terms, step hooks), whose priorities order it the
same way. Progress is read from the seam (optimizer updates), so gradient accumulation and resume keep
schedules right.
"""

from __future__ import annotations

from typing import Any, ClassVar

import paddle

from .seam import Seam

__all__ = ["SlimCallback"]

_ROUTED = ("on_epoch_begin", "on_epoch_end")


class _Conductor:
    """Runs each epoch-level event once for every member, in priority order."""

    def __init__(self) -> None:
        self.members: list[SlimCallback] = []
        self.set_up = False
        self.done: set[tuple[str, int]] = set()
        self.epoch_offset = 0  #: epochs completed before this fit (a resumed run), from the update count

    def ordered(self) -> list["SlimCallback"]:
        return sorted(self.members, key=lambda m: (m.priority, type(m).__name__))  # stable: list order last

    def ensure_setup(self, seam: Seam) -> None:
        if not self.set_up:
            self.set_up = True
            # checkpoints are written at epoch ends, so a resumed count is a whole number of epochs
            spe = self.members[0].steps_per_epoch if self.members else None
            self.epoch_offset = seam.global_step // spe if spe else 0
            for member in self.ordered():
                member.setup(seam)

    def dispatch(self, seam: Seam, event: str, epoch: int, logs: dict | None) -> None:
        self.ensure_setup(seam)
        epoch += self.epoch_offset
        if (event, epoch) in self.done:
            return
        self.done.add((event, epoch))
        for member in self.ordered():
            getattr(member, "_slim_" + event)(epoch, logs)

    def finish(self, seam: Seam) -> None:
        members, self.members = self.ordered(), []
        set_up, self.set_up = self.set_up, False
        self.done.clear()
        try:
            if set_up:
                for member in reversed(members):
                    member.teardown(seam)
        finally:
            for member in members:
                member.seam = None
                seam.release()


class SlimCallback(paddle.callbacks.Callback):
    """A ``paddle.callbacks.Callback`` that owns a share of the model's :class:`~slim_callbacks.seam.Seam`."""

    #: place in the order contract (see the module docstring); lower acts first
    priority: ClassVar[int] = 50
    seam: Seam | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _ROUTED:
            if name in cls.__dict__:  # the subclass's own hook becomes the conductor's target
                setattr(cls, "_slim_" + name, cls.__dict__[name])
                setattr(cls, name, getattr(SlimCallback, name))

    # hapi life cycle ---------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seam = Seam.attach(self.model)
        if self.seam.conductor is None:
            self.seam.conductor = _Conductor()
        self.seam.conductor.members.append(self)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is not None:
            self.seam.conductor.dispatch(self.seam, "on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is not None:
            self.seam.conductor.dispatch(self.seam, "on_epoch_end", epoch, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.seam is not None:
            self.seam.conductor.finish(self.seam)

    def _slim_on_epoch_begin(self, epoch: int, logs: dict | None) -> None:
        """Overridden by a subclass's ``on_epoch_begin``."""

    def _slim_on_epoch_end(self, epoch: int, logs: dict | None) -> None:
        """Overridden by a subclass's ``on_epoch_end``."""

    # for subclasses ------------------------------------------------------------------------------
    def setup(self, seam: Seam) -> None:
        """Register loss terms, transforms, hooks and state on ``seam``; before the first epoch."""

    def teardown(self, seam: Seam) -> None:
        """Undo :meth:`setup`. Called at train end (reverse priority), before the seam is released."""

    def channel_readers(self) -> dict[str, str]:
        """{network layer name: why} for layers whose output channels this callback reads outside the
        network (a distillation adapter); physical channel pruning keeps those channels whole."""
        return {}

    def shapes_fixed_from(self) -> float | None:
        """The epoch from which this callback needs the network's parameter shapes to stay fixed (it
        wraps or calibrates layers), or None. Physical channel pruning must be done before it; a
        callback acting at train end returns ``total_epochs``."""
        return None

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer updates per epoch in the running fit (None when the loader has no length)."""
        assert self.seam is not None, "steps_per_epoch is known only during fit"
        return self.seam.steps_per_epoch((self.params or {}).get("steps"))

    @property
    def total_epochs(self) -> int | None:
        """Epochs of the whole run: those done before a resume plus this fit's (None if unknown)."""
        epochs = (self.params or {}).get("epochs")
        if epochs is None:
            return None
        offset = self.seam.conductor.epoch_offset if self.seam is not None and self.seam.conductor else 0
        return offset + int(epochs)

    @property
    def global_step(self) -> int:
        """Optimizer updates done so far, including those before a resume."""
        assert self.seam is not None, "global_step is known only during fit"
        return self.seam.global_step

    @property
    def epoch_progress(self) -> float:
        """Training progress in (fractional) epochs, counted from optimizer updates."""
        spe = self.steps_per_epoch
        return self.global_step / spe if spe else 0.0

    def report_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        if self.seam is not None:
            self.seam.reporter.scalar(tag, value, step)

    def report_histogram(self, tag: str, values: Any, step: int | None = None) -> None:
        if self.seam is not None:
            self.seam.reporter.histogram(tag, values, step)

    def report_text(self, tag: str, text: str, step: int | None = None) -> None:
        if self.seam is not None:
            self.seam.reporter.text(tag, text, step)
