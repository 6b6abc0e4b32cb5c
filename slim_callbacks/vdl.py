"""VisualDL logging of training and of compression internals.

:class:`SlimVisualDL` writes, on rank 0 only:

* ``train/loss/<term>`` for every entry of ``logs['loss']`` (task loss and each extra term, named by the
  seam), ``train/<metric>``, ``train/lr``, every ``log_freq`` optimizer updates;
* ``eval/loss/<term>`` and ``eval/<metric>`` after each evaluation;
* every record of the seam's reporting protocol (scalars, histograms, text) under the producer's tag.

The x axis is the optimizer-update count (``seam.global_step``), the same clock schedules use, so a
resumed run continues its curves instead of restarting them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from .callback import SlimCallback
from .reporting import Record
from .seam import Seam

__all__ = ["SlimVisualDL", "check_writable_dir"]


def check_writable_dir(path: str, what: str = "log dir") -> str:
    """Create ``path`` if needed and prove it is writable; raise a clear error naming it otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)  # unique: ranks probe at once
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise PermissionError(f"the {what} {path!r} is not writable: {err.strerror or err}") from err
    return path


def _floats(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [float(np.asarray(v).mean()) for v in value]
    return [float(np.asarray(value).mean())]


class SlimVisualDL(SlimCallback):
    """Log training, evaluation and compression reports to VisualDL.

    Args:
        log_dir: the VisualDL log directory (created if missing; must be writable).
        log_freq: write training scalars every this many optimizer updates.
        close_at_end: close the writer at train end. The trainer keeps it open to add the compression
            card afterwards, then calls :meth:`close`.
    """

    priority = 90  # after every compression callback (see slim_callbacks.callback)

    def __init__(self, log_dir: str, log_freq: int = 10, close_at_end: bool = True) -> None:
        super().__init__()
        if log_freq < 1:
            raise ValueError(f"log_freq must be >= 1 optimizer update, got {log_freq}")
        self.log_dir = check_writable_dir(log_dir)
        self.log_freq = log_freq
        self.close_at_end = close_at_end
        self._writer = None
        self._last_logged = -1

    @property
    def writer(self):
        """The VisualDL LogWriter (opened lazily; None on ranks other than 0)."""
        from paddle.distributed import ParallelEnv

        if self._writer is None and ParallelEnv().local_rank == 0:
            from visualdl import LogWriter

            self._writer = LogWriter(logdir=self.log_dir)
        return self._writer

    # ------------------------------------------------------------------------------- sink
    def write(self, record: Record) -> None:
        """Write one reporting-protocol record."""
        writer = self.writer
        if writer is None:
            return
        if record.kind == "scalar":
            writer.add_scalar(record.tag, record.value, record.step)
        elif record.kind == "histogram":
            if record.value.size:
                writer.add_histogram(record.tag, record.value, record.step, buckets=min(30, max(1, record.value.size)))
        elif record.kind == "text":
            writer.add_text(record.tag, record.value, record.step)

    def setup(self, seam: Seam) -> None:
        seam.reporter.add_sink(self.write)

    def teardown(self, seam: Seam) -> None:
        seam.reporter.remove_sink(self.write)
        if self._writer is not None:
            self._writer.flush()
        if self.close_at_end:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---------------------------------------------------------------------------- hapi hooks
    def _write_logs(self, prefix: str, logs: dict, step: int) -> None:
        writer = self.writer
        if writer is None or self.seam is None:
            return
        metric_names = list((self.params or {}).get("metrics", []))
        if "loss" in logs:
            values = _floats(logs["loss"])
            names = self.seam.loss_names(prefix)
            for i, value in enumerate(values):
                name = names[i] if i < len(names) else f"term{i}"
                writer.add_scalar(f"{prefix}/loss/{name}", value, step)
            if len(values) > 1:
                writer.add_scalar(f"{prefix}/loss/total", sum(values), step)
        for name in metric_names:
            if name == "loss":
                continue
            if name in logs:
                writer.add_scalar(f"{prefix}/{name}", _floats(logs[name])[0], step)

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        if self.seam is not None and logs and self.seam.global_step % self.log_freq == 0:
            self._log_train(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is not None and logs:
            self._log_train(logs)  # the epoch's last values, even when it is shorter than log_freq

    def _log_train(self, logs: dict) -> None:
        gstep = self.seam.global_step
        if gstep == self._last_logged:
            return
        self._last_logged = gstep
        self._write_logs("train", logs, gstep)
        if self.writer is not None:
            self.writer.add_scalar("train/lr", float(self.seam.optimizer.get_lr()), gstep)

    def on_eval_end(self, logs: dict | None = None) -> None:
        if self.seam is not None and logs:
            self._write_logs("eval", logs, self.seam.global_step)
