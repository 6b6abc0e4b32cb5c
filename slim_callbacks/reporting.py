"""The reporting protocol: how a compression core or callback tells the outside world what it is doing.

A :class:`Reporter` lives on the seam (``seam.reporter``). Producers call :meth:`Reporter.scalar`,
:meth:`Reporter.histogram` or :meth:`Reporter.text`; every registered sink (VisualDL, a test's list, a
JSON log) receives each record at once. With no sink, records are dropped: reporting never costs
memory and never fails training. Steps are optimizer updates unless the producer says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Record", "Reporter"]


@dataclass(frozen=True)
class Record:
    """One report: ``kind`` is 'scalar', 'histogram' or 'text'; ``value`` a float, an ndarray or a str."""

    kind: str
    tag: str
    value: Any
    step: int


class Reporter:
    """Fan-out of records to sinks (callables taking a :class:`Record`)."""

    def __init__(self) -> None:
        self._sinks: list[Callable[[Record], None]] = []
        self.default_step: Callable[[], int] = lambda: 0

    def add_sink(self, sink: Callable[[Record], None]) -> None:
        if sink not in self._sinks:
            self._sinks.append(sink)

    def remove_sink(self, sink: Callable[[Record], None]) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    @property
    def active(self) -> bool:
        """True when someone listens; producers may skip expensive summaries otherwise."""
        return bool(self._sinks)

    def _emit(self, kind: str, tag: str, value: Any, step: int | None) -> None:
        if not self._sinks:
            return
        record = Record(kind, tag, value, self.default_step() if step is None else int(step))
        for sink in list(self._sinks):
            sink(record)

    def scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self._emit("scalar", tag, float(value), step)

    def histogram(self, tag: str, values: Any, step: int | None = None) -> None:
        self._emit("histogram", tag, np.asarray(values, dtype=np.float32).ravel(), step)

    def text(self, tag: str, text: str, step: int | None = None) -> None:
        self._emit("text", tag, str(text), step)
