"""Decision latency, measured where it happens: from a trade's arrival in ingest (``recv_ns``,
CLOCK_MONOTONIC, stamped on the trade tape by ingest) to the order reaching the broker, and to every
candle-close decision (from the trade that closed the candle). CLOCK_MONOTONIC is system-wide on
Linux, so stamps from two processes compare.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import islice

import numpy as np

from .broker import PaperBroker
from .fills import FillModel
from .inputs import ShmInputs
from .upbit_broker import UpbitBroker


class LatencyProbe:
    """Microseconds from a trade's arrival in ingest (its ``recv_ns`` on the tape) to a decision."""

    def __init__(self, keep: int = 100_000):
        self.orders: deque[float] = deque(maxlen=keep)
        self.decisions: deque[float] = deque(maxlen=keep)

    @staticmethod
    def recent(xs: deque, n: int = 2000) -> list[float]:
        """The newest ``n`` samples (for the status row, 4 times a second: not the whole window)."""
        return list(islice(reversed(xs), n))

    @staticmethod
    def summary(xs) -> dict:
        """``n``, ``p50_us``, ``p99_us``, ``p999_us``, ``max_us`` of latencies in µs (a deque, a list or an array)."""
        # list(deque) copies in one C call: safe while the engine appends
        a = xs.astype(float, copy=False) if isinstance(xs, np.ndarray) else np.array(list(xs), float)
        if not len(a):
            return {"n": 0}
        p50, p99, p999 = np.percentile(a, [50, 99, 99.9]).tolist()
        return {"n": len(a), "p50_us": p50, "p99_us": p99, "p999_us": p999, "max_us": float(a.max())}


class Timed:
    """A broker that times each order's arrival (the call to ``submit``) against the trade that triggered it."""
    inputs: ShmInputs
    probe: LatencyProbe

    def submit(self, order):
        trigger = self.inputs.trigger_ns
        if trigger:
            self.probe.orders.append((time.monotonic_ns() - trigger) / 1000)
        return super().submit(order)


class TimedPaperBroker(Timed, PaperBroker):
    def __init__(self, model: FillModel, inputs: ShmInputs, probe: LatencyProbe):
        super().__init__(model)
        self.inputs, self.probe = inputs, probe


class TimedUpbitBroker(Timed, UpbitBroker):
    def __init__(self, *args, inputs: ShmInputs, probe: LatencyProbe, **kw):
        super().__init__(*args, **kw)
        self.inputs, self.probe = inputs, probe
