"""Time behind one object, so that tests drive it (as nautilus passes its clock to every component).

:class:`SystemClock` is the real one. Code that decides by time takes a clock (``monotonic()``
for intervals, ``time_ns()`` for the wall clock of trades and logs) and waits with
``wait(event, seconds)``, which returns early when ``event`` is set (a stop request); a test
clock can advance time instead of sleeping.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds of a monotonic clock (intervals, deadlines)."""

    def time_ns(self) -> int:
        """Wall clock, Unix ns UTC."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Sleep up to ``seconds``; True at once if ``event`` is (or becomes) set."""


class SystemClock:
    """The machine's clocks."""

    monotonic = staticmethod(time.monotonic)
    time_ns = staticmethod(time.time_ns)

    @staticmethod
    def wait(event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
