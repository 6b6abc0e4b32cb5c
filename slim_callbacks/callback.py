"""The base of every slim callback: attach to the shared seam for the length of one ``fit``.

Subclasses implement :meth:`SlimCallback.setup` / :meth:`SlimCallback.teardown` and the usual hapi
hooks; they decide *when* a core acts and leave the work to the core. Progress is read from the seam
(optimizer updates), so gradient accumulation and resume keep schedules right.
"""

from __future__ import annotations

from typing import Any

import paddle

from .seam import Seam

__all__ = ["SlimCallback"]


class SlimCallback(paddle.callbacks.Callback):
    """A ``paddle.callbacks.Callback`` that owns a share of the model's :class:`~slim_callbacks.seam.Seam`."""

    seam: Seam | None = None

    # hapi life cycle ---------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seam = Seam.attach(self.model)
        self.setup(self.seam)

    def on_train_end(self, logs: dict | None = None) -> None:
        seam, self.seam = self.seam, None
        if seam is None:
            return
        try:
            self.teardown(seam)
        finally:
            seam.release()

    # for subclasses ------------------------------------------------------------------------------
    def setup(self, seam: Seam) -> None:
        """Register loss terms, transforms, hooks and state on ``seam``. Called at train begin."""

    def teardown(self, seam: Seam) -> None:
        """Undo :meth:`setup`. Called at train end, before the seam is released."""

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer updates per epoch in the running fit (None when the loader has no length)."""
        assert self.seam is not None, "steps_per_epoch is known only during fit"
        return self.seam.steps_per_epoch((self.params or {}).get("steps"))

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
