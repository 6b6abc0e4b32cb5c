"""Pure, serializable schedules shared by every compression technique.

A schedule maps training progress to a value (a sparsity, a loss weight, a ratio ...). Progress is
counted in *optimizer updates* (steps), never in batches, so gradient accumulation does not skew it:
with ``accumulate_grad_batches=4`` one update happens every 4 batches and the schedule advances once.

``start`` and ``end`` are given either in epochs (``unit='epoch'``, may be fractional) or in optimizer
steps (``unit='step'``). Epoch positions are turned into steps with ``steps_per_epoch`` (optimizer
updates per epoch), which the caller passes to :meth:`Schedule.value_at`.

Before ``start`` a schedule returns ``initial``; after ``end`` it returns ``final``; in between it
interpolates according to its shape. Every schedule round-trips through :meth:`Schedule.get_config`
and :func:`schedule_from_config`, which is what makes recipes and resume simple (the idea of
TF-MOT's ``pruning_schedule.py``). :class:`CallableSchedule` wraps a user function and is the only
kind that cannot be serialized.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar

__all__ = [
    "Schedule",
    "ConstantSchedule",
    "LinearSchedule",
    "PolynomialSchedule",
    "CubicSchedule",
    "ExponentialSchedule",
    "CallableSchedule",
    "schedule_from_config",
    "SCHEDULES",
]

_UNITS = ("epoch", "step")


@dataclass
class Schedule:
    """Base class. Subclasses implement :meth:`_shape` on the normalized progress ``t`` in [0, 1].

    Attributes:
        initial: value before ``start``.
        final: value at and after ``end``.
        start: where the ramp begins, in ``unit``.
        end: where the ramp ends, in ``unit`` (``end >= start``).
        unit: ``'epoch'`` or ``'step'`` (optimizer updates).
        frequency: hold the value constant for this many optimizer steps between updates
            (1 = change every step). Values are taken at multiples of ``frequency`` after ``start``,
            as in Zhu & Gupta's pruning every Δt steps. Use 0 with ``unit='epoch'`` to change
            only at epoch boundaries.
    """

    initial: float = 0.0
    final: float = 0.0
    start: float = 0.0
    end: float = 0.0
    unit: str = "epoch"
    frequency: int = 0

    kind: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        if self.unit not in _UNITS:
            raise ValueError(f"schedule unit {self.unit!r} is not valid; use one of {list(_UNITS)}")
        for name in ("initial", "final", "start", "end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise ValueError(f"schedule {name} must be a number, got {value!r}")
        if self.start < 0:
            raise ValueError(f"schedule start must be >= 0, got {self.start}")
        if self.end < self.start:
            raise ValueError(
                f"schedule end ({self.end} {self.unit}s) is before start ({self.start} {self.unit}s)"
            )
        if not isinstance(self.frequency, int) or self.frequency < 0:
            raise ValueError(f"schedule frequency must be a whole number of steps >= 0, got {self.frequency!r}")

    # ----------------------------------------------------------------------------------- positions
    def _to_steps(self, position: float, steps_per_epoch: int | None) -> float:
        if self.unit == "step":
            return float(position)
        if steps_per_epoch is None or steps_per_epoch <= 0:
            raise ValueError(
                "this schedule counts in epochs; pass steps_per_epoch (optimizer updates per epoch)"
            )
        return float(position) * steps_per_epoch

    def progress(self, step: int, steps_per_epoch: int | None = None) -> float:
        """Normalized progress in [0, 1] after ``step`` optimizer updates."""
        start = self._to_steps(self.start, steps_per_epoch)
        end = self._to_steps(self.end, steps_per_epoch)
        if step <= start:
            return 0.0
        if step >= end:
            return 1.0
        elapsed = step - start
        if self.frequency > 0:
            elapsed = math.floor(elapsed / self.frequency) * self.frequency
        elif self.unit == "epoch" and steps_per_epoch:
            # change only at epoch boundaries: floor to whole epochs since start
            elapsed = math.floor(elapsed / steps_per_epoch + 1e-9) * steps_per_epoch
        return min(1.0, max(0.0, elapsed / (end - start)))

    def value_at(self, step: int, steps_per_epoch: int | None = None) -> float:
        """The scheduled value after ``step`` optimizer updates (``steps_per_epoch`` needed for epoch units)."""
        start = self._to_steps(self.start, steps_per_epoch)
        end = self._to_steps(self.end, steps_per_epoch)
        if step < start:
            return float(self.initial)
        if end <= start or step >= end:
            return float(self.final)
        return float(self._shape(self.progress(step, steps_per_epoch)))

    def value_at_epoch(self, epoch: float, steps_per_epoch: int) -> float:
        """The value at the start of ``epoch`` (0-based) given ``steps_per_epoch`` optimizer updates."""
        return self.value_at(int(round(epoch * steps_per_epoch)), steps_per_epoch)

    def _shape(self, t: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------------------- serialization
    def get_config(self) -> dict[str, Any]:
        """A plain dict that :func:`schedule_from_config` turns back into an equal schedule."""
        return {"kind": self.kind, **asdict(self)}


@dataclass
class ConstantSchedule(Schedule):
    """Always ``final`` from ``start`` on (``initial`` before it). ``ConstantSchedule(final=v)`` is v everywhere."""

    kind: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        self.end = max(self.end, self.start)  # a step, not a ramp
        super().__post_init__()

    def _shape(self, t: float) -> float:
        return self.final


@dataclass
class LinearSchedule(Schedule):
    """Straight line from ``initial`` at ``start`` to ``final`` at ``end``."""

    kind: ClassVar[str] = "linear"

    def _shape(self, t: float) -> float:
        return self.initial + (self.final - self.initial) * t


@dataclass
class PolynomialSchedule(Schedule):
    """Zhu & Gupta (2017) automated gradual pruning: ``final + (initial - final) * (1 - t) ** power``.

    With ``power=3`` (the default, :class:`CubicSchedule`) the value moves fast early, when there is
    most redundancy, and slowly near the end.
    """

    power: float = 3.0
    kind: ClassVar[str] = "polynomial"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.power > 0:
            raise ValueError(f"polynomial schedule power must be > 0, got {self.power}")

    def _shape(self, t: float) -> float:
        return self.final + (self.initial - self.final) * (1.0 - t) ** self.power


@dataclass
class CubicSchedule(PolynomialSchedule):
    """The cubic AGP schedule (``PolynomialSchedule`` with ``power=3``)."""

    kind: ClassVar[str] = "cubic"

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("power")
        return config

    def __post_init__(self) -> None:
        self.power = 3.0
        super().__post_init__()


@dataclass
class ExponentialSchedule(Schedule):
    """Geometric interpolation: ``initial * (final / initial) ** t``.

    Both ends must be > 0; handy for loss weights and temperatures spanning orders of magnitude. For a
    ramp that must start at 0 use :class:`PolynomialSchedule`.
    """

    kind: ClassVar[str] = "exponential"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.initial <= 0 or self.final <= 0:
            raise ValueError(
                f"exponential schedule needs initial > 0 and final > 0, got {self.initial} and {self.final}"
            )

    def _shape(self, t: float) -> float:
        return self.initial * (self.final / self.initial) ** t


@dataclass
class CallableSchedule(Schedule):
    """A user function ``fn(step, steps_per_epoch) -> float``; not serializable."""

    fn: Callable[[int, int | None], float] | None = None
    kind: ClassVar[str] = "callable"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise ValueError("CallableSchedule needs fn=callable(step, steps_per_epoch) -> float")

    def value_at(self, step: int, steps_per_epoch: int | None = None) -> float:
        assert self.fn is not None
        return float(self.fn(step, steps_per_epoch))

    def _shape(self, t: float) -> float:  # pragma: no cover - value_at is overridden
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise TypeError("a CallableSchedule wraps a Python function and cannot be serialized")


SCHEDULES: dict[str, type[Schedule]] = {
    cls.kind: cls
    for cls in (ConstantSchedule, LinearSchedule, PolynomialSchedule, CubicSchedule, ExponentialSchedule)
}


def schedule_from_config(config: dict[str, Any] | Schedule) -> Schedule:
    """Build a schedule from ``{'kind': 'cubic', 'initial': 0, 'final': 0.8, 'start': 0, 'end': 3}``.

    Errors name the bad key and list the valid ones.
    """
    if isinstance(config, Schedule):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"a schedule config must be a dict, got {type(config).__name__}")
    config = dict(config)
    kind = config.pop("kind", "linear")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; valid kinds: {sorted(SCHEDULES)}")
    cls = SCHEDULES[kind]
    valid = {f.name for f in fields(cls) if f.init}
    if kind == "cubic":
        valid.discard("power")
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for a {kind!r} schedule; valid keys: {sorted(valid)}")
    return cls(**config)
