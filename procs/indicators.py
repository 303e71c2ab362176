"""Indicator math on numpy arrays and incremental state — no I/O.

EMA as in TA-Lib (``TA_EMA``, default compatibility): smoothing ``k = 2 / (period + 1)``;
the first value, at index ``period - 1``, is the simple mean of the first ``period``
closes; then ``ema = prev + k * (close - prev)``. Earlier indices are NaN (TA-Lib's
lookback ``period - 1``).

The incremental form (:class:`Ema`) does O(1) work per closed candle, and gives the open
candle a provisional value from the last closed state (:meth:`Ema.peek`) without
folding it in, so repeated updates of the open candle never accumulate.
"""
from __future__ import annotations

import math

import numpy as np

NAN = float("nan")


def ema(closes: np.ndarray, period: int) -> np.ndarray:
    """Batch EMA of ``closes`` (float64, shape (n,)) → float64 (n,), NaN for the first ``period - 1``."""
    closes = np.asarray(closes, dtype=np.float64)
    out = np.full(len(closes), np.nan)
    if period < 1:
        raise ValueError("period must be >= 1")
    if len(closes) < period:
        return out
    k = 2.0 / (period + 1)
    prev = float(closes[:period].sum()) / period
    out[period - 1] = prev
    for i in range(period, len(closes)):
        prev = prev + k * (float(closes[i]) - prev)
        out[i] = prev
    return out


class Ema:
    """Incremental TA-Lib-seeded EMA. ``update`` folds a closed candle's close, ``peek`` does not."""

    __slots__ = ("period", "k", "n", "acc", "value")

    def __init__(self, period: int):
        if period < 1:
            raise ValueError("period must be >= 1")
        self.period = period
        self.k = 2.0 / (period + 1)
        self.n = 0          # closes folded in
        self.acc = 0.0      # running sum while seeding
        self.value = NAN    # EMA after the last folded close (NaN while warming up)

    def update(self, close: float) -> float:
        """Fold one closed candle's close (float64 KRW); returns the EMA at that candle."""
        self.n += 1
        if self.n < self.period:
            self.acc += close
            return NAN
        if self.n == self.period:
            self.acc += close
            self.value = self.acc / self.period
            return self.value
        self.value = self.value + self.k * (close - self.value)
        return self.value

    def peek(self, close: float) -> float:
        """The EMA the open candle would have if it closed at ``close`` (state unchanged)."""
        if self.n + 1 < self.period:
            return NAN
        if self.n + 1 == self.period:
            return (self.acc + close) / self.period
        return self.value + self.k * (close - self.value)

    @property
    def ready(self) -> bool:
        return not math.isnan(self.value)
