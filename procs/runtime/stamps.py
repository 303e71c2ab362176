"""Pipeline latency stamps: for each trade, the time from its arrival in ingest (``recv_ns`` on the trade
tape, CLOCK_MONOTONIC, which is system-wide on Linux) to the moment a stage finished with it, taken where
that stage runs:

* ingest — ``frame -> candle in shm``: the frame's trades written to the candle rings and the tape, the
  global seqs bumped and the consumers woken;
* indicator — ``frame -> indicator values``: the values of every timeframe written for the candles those
  trades changed;
* trader — ``frame -> trader decision``: the engine has applied the trade (exits checked, a candle it
  closed evaluated).

Also, in the monitor, ``monitor draw`` (each frame's draw time) and ``monitor frame interval``.

Off unless ``[latency] samples`` > 0 (the benchmarks set it): each stage keeps its newest ``samples``
values (float64 µs, with the CLOCK_MONOTONIC ns each was taken at) in fixed numpy rings, and
:meth:`LatencyLog.write` saves them to ``run/<instance>/latency/<process>.npz`` when the process stops.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .config import BaseConfig


class StageSamples:
    """The newest ``capacity`` latencies of one stage: ``us`` float64 µs, each with ``at``, the int64 ns
    (CLOCK_MONOTONIC) at which it was taken, so a reader can keep a time window; oldest overwritten first."""

    __slots__ = ("us", "at", "n")

    def __init__(self, capacity: int):
        self.us = np.zeros(capacity, np.float64)
        self.at = np.zeros(capacity, np.int64)
        self.n = 0          # samples added in all

    def add(self, us: float, times: int = 1) -> None:
        """``times`` samples of ``us``, taken now (the trades of one frame share their frame's latency)."""
        if times == 1:
            k = self.n % len(self.us)
            self.us[k], self.at[k] = us, time.monotonic_ns()
            self.n += 1
        else:
            self.extend(np.full(times, us))

    def add_since(self, recv_ns: np.ndarray, now_ns: int) -> None:
        """One sample per stamp: ``now_ns - recv_ns`` (int64 ns, CLOCK_MONOTONIC) in µs, taken at ``now_ns``."""
        self.extend((now_ns - recv_ns.astype(np.int64)) / 1000.0, now_ns)

    def extend(self, us, at_ns: int | None = None) -> None:
        """Samples already in µs (an array or an iterable of floats), taken at ``at_ns`` (default: now)."""
        us = np.asarray(us if isinstance(us, np.ndarray) else list(us), np.float64)
        cap, m = len(self.us), len(us)
        start = self.n
        if m > cap:
            us, start = us[-cap:], self.n + m - cap
        slots = (start + np.arange(len(us))) % cap
        self.us[slots] = us
        self.at[slots] = time.monotonic_ns() if at_ns is None else at_ns
        self.n += m

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """``(us, at_ns)`` of the samples kept, oldest first."""
        cap = len(self.us)
        if self.n <= cap:
            return self.us[:self.n].copy(), self.at[:self.n].copy()
        k = self.n % cap
        return np.concatenate((self.us[k:], self.us[:k])), np.concatenate((self.at[k:], self.at[:k]))


class LatencyLog:
    """A process's stages. ``enabled`` is False (and nothing is kept) when ``[latency] samples`` is 0."""

    def __init__(self, base: BaseConfig, process: str):
        self.capacity = base.latency.samples
        self.enabled = self.capacity > 0
        self.path = Path(base.run_dir) / "latency" / f"{process}.npz"
        self.stages: dict[str, StageSamples] = {}

    def stage(self, name: str) -> StageSamples:
        st = self.stages.get(name)
        if st is None:
            st = self.stages[name] = StageSamples(self.capacity)
        return st

    @staticmethod
    def now_ns() -> int:
        return time.monotonic_ns()

    def write(self) -> Path | None:
        """Save every stage's samples (``np.savez``: ``<stage>`` → float64 µs and ``<stage>@`` → int64 ns
        CLOCK_MONOTONIC when taken, oldest first); None when off."""
        if not self.enabled:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        arrays = {}
        for name, st in self.stages.items():
            arrays[name], arrays[name + "@"] = st.values()
        np.savez(tmp, **arrays)
        tmp.replace(self.path)
        return self.path
