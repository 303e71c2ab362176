"""Indicator math on numpy arrays and incremental state — no I/O.

Every indicator follows TA-Lib's algorithm and seeding operation for operation (default
compatibility, no unstable period), so the values equal TA-Lib's to float rounding, and each
has a batch function (arrays in, arrays out, NaN where TA-Lib's lookback gives none) and an
incremental class (``update`` folds one closed candle in O(1); ``peek`` gives the open
candle's provisional value from the last closed state without changing it):

* EMA (below), RSI (:func:`rsi`, :class:`Rsi`), MACD (:func:`macd`, :class:`Macd`),
  Bollinger Bands (:func:`bbands`, :class:`BBands`); :class:`IndicatorSet` bundles them.

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
from collections import deque

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



#: TA-Lib's TA_IS_ZERO / TA_IS_ZERO_OR_NEG threshold (TA_EPSILON = 1e-14 in TA-Lib 0.6; 1e-8 in old
#: releases — measured against the TA-Lib wheel used in tests: variance 1.1e-14 keeps its std, 9e-15 is 0).
TA_EPSILON = 1e-14


# -- RSI ---------------------------------------------------------------------------------------
def _wilder(gain: float, loss: float, d: float, p: int) -> tuple[float, float]:
    """One step of Wilder's smoothing of the mean gain and loss (``avg = (avg*(p-1) + x)/p``, TA-Lib's order)
    for a close-to-close change ``d``."""
    loss *= (p - 1)
    gain *= (p - 1)
    if d < 0:
        loss -= d
    else:
        gain += d
    return gain / p, loss / p


def _rsi_value(gain: float, loss: float) -> float:
    s = gain + loss
    return 100.0 * (gain / s) if not (-TA_EPSILON < s < TA_EPSILON) else 0.0


class Rsi:
    """Incremental RSI, Wilder smoothing as in TA-Lib's TA_RSI: the first value (after
    ``period`` differences) uses the mean gain and loss; then ``avg = (avg*(p-1) + x)/p``."""

    __slots__ = ("period", "n", "prev", "gain", "loss")

    def __init__(self, period: int = 14):
        if period < 2:
            raise ValueError("RSI period must be >= 2")
        self.period = period
        self.n = 0
        self.prev = NAN
        self.gain = 0.0
        self.loss = 0.0

    def _step(self, close: float, commit: bool) -> float:
        p = self.period
        n = self.n + 1
        if n == 1:
            if commit:
                self.n, self.prev = n, close
            return NAN
        d = close - self.prev
        gain, loss = self.gain, self.loss
        if n <= p + 1:  # seeding: the first p differences are summed
            if d < 0:
                loss -= d
            else:
                gain += d
            if n == p + 1:
                loss /= p
                gain /= p
            out = _rsi_value(gain, loss) if n == p + 1 else NAN
        else:
            gain, loss = _wilder(gain, loss, d, p)
            out = _rsi_value(gain, loss)
        if commit:
            self.n, self.prev, self.gain, self.loss = n, close, gain, loss
        return out

    def update(self, close: float) -> float:
        return self._step(close, True)

    def peek(self, close: float) -> float:
        return self._step(close, False)


def rsi(closes: np.ndarray, period: int = 14) -> np.ndarray:
    """Batch RSI (float64 percent, NaN for the first ``period`` candles), as TA-Lib's TA_RSI."""
    st = Rsi(period)
    return np.array([st.update(float(c)) for c in np.asarray(closes, np.float64)])


# -- MACD --------------------------------------------------------------------------------------
class Macd:
    """Incremental MACD as TA-Lib's TA_MACD: both EMAs start at candle ``slow - 1``, the slow one
    seeded with the mean of the first ``slow`` closes, the fast one with the mean of the ``fast``
    closes ending there; the signal EMA is seeded with the mean of the first ``signal`` MACD
    values. All three outputs are NaN before candle ``slow + signal - 2``."""

    __slots__ = ("fast", "slow", "signal", "kf", "ks", "kg", "n", "seed", "fast_v", "slow_v", "sig_seed", "sig_v")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9):
        if not 1 < fast < slow or signal < 1:
            raise ValueError("MACD needs 1 < fast < slow and signal >= 1")
        self.fast, self.slow, self.signal = fast, slow, signal
        self.kf, self.ks, self.kg = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (signal + 1)
        self.n = 0
        self.seed: list[float] = []
        self.fast_v = self.slow_v = NAN
        self.sig_seed: list[float] = []
        self.sig_v = NAN

    def _step(self, close: float, commit: bool) -> tuple[float, float, float]:
        n = self.n + 1
        nan3 = (NAN, NAN, NAN)
        if n < self.slow:
            if commit:
                self.n = n
                self.seed.append(close)
            return nan3
        if n == self.slow:
            buf = self.seed + [close]
            slow_v = _seq_sum(buf) / self.slow
            fast_v = _seq_sum(buf[self.slow - self.fast:]) / self.fast
        else:
            fast_v = ((close - self.fast_v) * self.kf) + self.fast_v
            slow_v = ((close - self.slow_v) * self.ks) + self.slow_v
        m = fast_v - slow_v
        sig_seed, sig_v = self.sig_seed, self.sig_v
        if len(sig_seed) < self.signal:
            sig_seed = sig_seed + [m]
            if len(sig_seed) == self.signal:
                sig_v = _seq_sum(sig_seed) / self.signal
                out = (m, sig_v, m - sig_v)
            else:
                out = nan3
        else:
            sig_v = ((m - sig_v) * self.kg) + sig_v
            out = (m, sig_v, m - sig_v)
        if commit:
            self.n, self.fast_v, self.slow_v, self.sig_seed, self.sig_v = n, fast_v, slow_v, sig_seed, sig_v
            if n == self.slow:
                self.seed = []
        return out

    def update(self, close: float) -> tuple[float, float, float]:
        """Fold a closed candle; returns (macd, signal, histogram), float64 KRW."""
        return self._step(close, True)

    def peek(self, close: float) -> tuple[float, float, float]:
        return self._step(close, False)


def macd(closes: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9):
    """Batch MACD → (macd, signal, hist) float64 arrays, as TA-Lib's TA_MACD."""
    st = Macd(fast, slow, signal)
    out = np.array([st.update(float(c)) for c in np.asarray(closes, np.float64)]).reshape(-1, 3)
    return out[:, 0], out[:, 1], out[:, 2]


# -- Bollinger Bands ---------------------------------------------------------------------------
class BBands:
    """Incremental Bollinger Bands as TA-Lib's TA_BBANDS with an SMA middle: running sums of the
    closes and their squares over ``period`` (added, then the oldest subtracted, as TA-Lib does);
    population standard deviation ``sqrt(mean(x²) - mean(x)²)`` (0 below TA_EPSILON);
    bands ``mid ± k * std``."""

    __slots__ = ("period", "k", "window", "total", "total2")

    def __init__(self, period: int = 20, k: float = 2.0):
        if period < 2:
            raise ValueError("Bollinger period must be >= 2")
        self.period, self.k = period, k
        self.window: deque = deque()
        self.total = 0.0
        self.total2 = 0.0

    def _step(self, close: float, commit: bool) -> tuple[float, float, float]:
        p = self.period
        if len(self.window) < p - 1:
            if commit:
                self.window.append(close)
                self.total += close
                self.total2 += close * close
            return (NAN, NAN, NAN)
        t = self.total + close
        mid = t / p
        t2 = self.total2 + close * close
        var = t2 / p - mid * mid
        std = math.sqrt(var) if var >= TA_EPSILON else 0.0
        band = std * self.k
        if commit:
            oldest = self.window.popleft() if len(self.window) == p - 1 else None
            self.window.append(close)
            self.total = t - oldest
            self.total2 = t2 - oldest * oldest
        return (mid + band, mid, mid - band)

    def update(self, close: float) -> tuple[float, float, float]:
        """Fold a closed candle; returns (upper, middle, lower), float64 KRW."""
        return self._step(close, True)

    def peek(self, close: float) -> tuple[float, float, float]:
        return self._step(close, False)


def bbands(closes: np.ndarray, period: int = 20, k: float = 2.0):
    """Batch Bollinger Bands → (upper, middle, lower) float64 arrays, as TA-Lib's TA_BBANDS."""
    st = BBands(period, k)
    out = np.array([st.update(float(c)) for c in np.asarray(closes, np.float64)]).reshape(-1, 3)
    return out[:, 0], out[:, 1], out[:, 2]


def _seq_sum(xs) -> float:
    """Left-to-right float sum (TA-Lib's seeding loops add in this order)."""
    total = 0.0
    for x in xs:
        total += x
    return total


# -- all of them -------------------------------------------------------------------------------
class IndicatorSet:
    """Every indicator of one market and timeframe, in the order of ``INDICATOR_DTYPE`` after ``t``:
    ema_fast, ema_slow, rsi, macd, macd_signal, macd_hist, bb_mid, bb_upper, bb_lower."""

    __slots__ = ("ema_fast", "ema_slow", "rsi", "macd", "bb", "_warm_after")

    def __init__(self, ema_fast=12, ema_slow=26, rsi_period=14, macd_fast=12, macd_slow=26, macd_signal=9,
                 bb_period=20, bb_k=2.0):
        self.ema_fast, self.ema_slow = Ema(ema_fast), Ema(ema_slow)
        self.rsi = Rsi(rsi_period)
        self.macd = Macd(macd_fast, macd_slow, macd_signal)
        self.bb = BBands(bb_period, bb_k)
        # closes after which every indicator is past its seeding (then :meth:`update` takes the steady path)
        self._warm_after = max(ema_fast, ema_slow, rsi_period + 1, macd_slow + macd_signal - 1, bb_period)

    def update(self, close: float) -> tuple:
        """Fold one closed candle's close; returns the nine values. Once every indicator is seeded, one
        function does the steady-state step of each — the same float operations in the same order as the
        components' own ``update`` (bit for bit; a test holds it), without their per-call branching."""
        if self.ema_fast.n >= self._warm_after:
            return self._steady(close)
        m = self.macd.update(close)
        up, mid, lo = self.bb.update(close)
        return (self.ema_fast.update(close), self.ema_slow.update(close), self.rsi.update(close), *m, mid, up, lo)

    def _steady(self, close: float) -> tuple:
        ef, es, r, m, bb = self.ema_fast, self.ema_slow, self.rsi, self.macd, self.bb
        ef.n += 1
        fast = ef.value = ef.value + ef.k * (close - ef.value)
        es.n += 1
        slow = es.value = es.value + es.k * (close - es.value)
        # RSI: Wilder smoothing
        gain, loss = _wilder(r.gain, r.loss, close - r.prev, r.period)
        r.n += 1
        r.prev, r.gain, r.loss = close, gain, loss
        rsi = _rsi_value(gain, loss)
        # MACD
        m.n += 1
        fast_v = m.fast_v = ((close - m.fast_v) * m.kf) + m.fast_v
        slow_v = m.slow_v = ((close - m.slow_v) * m.ks) + m.slow_v
        line = fast_v - slow_v
        sig = m.sig_v = ((line - m.sig_v) * m.kg) + m.sig_v
        # Bollinger Bands (the window is full)
        bp = bb.period
        t = bb.total + close
        mid = t / bp
        t2 = bb.total2 + close * close
        var = t2 / bp - mid * mid
        band = (math.sqrt(var) if var >= TA_EPSILON else 0.0) * bb.k
        oldest = bb.window.popleft()
        bb.window.append(close)
        bb.total = t - oldest
        bb.total2 = t2 - oldest * oldest
        return (fast, slow, rsi, line, sig, line - sig, mid, mid + band, mid - band)

    def peek(self, close: float) -> tuple:
        m = self.macd.peek(close)
        up, mid, lo = self.bb.peek(close)
        return (self.ema_fast.peek(close), self.ema_slow.peek(close), self.rsi.peek(close), *m, mid, up, lo)
