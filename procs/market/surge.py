"""Surge alerts (급등주 알림): a market whose price jumped *and* whose trading swelled at once.

A candle *fires* when both hold over the ``window`` candles ending with it (the newest included):

* **return** — its close over the open of the window's first candle, ``(close / open - 1) * 100`` ≥
  ``min_return_pct`` (a rise only: a crash is no surge);
* **traded value** — the KRW traded in the window (``value``, summed) over what the same number of candles traded
  on average in the ``baseline`` candles before the window ≥ ``min_value_ratio``.

A market with fewer than ``window + baseline`` candles, or a baseline that traded nothing, never fires (no
reference). Candles of any timeframe; a gap between candles (no trade) simply makes the window span more time,
as on Upbit's charts. :func:`surge_mask` evaluates every candle of a history (the tests and the backtests), and
:func:`surge_at` the newest one (the gateway, on every move of the candle table). Pure: numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SurgeRule:
    """The thresholds (``gateway.surge_*`` in the configuration)."""
    window: int = 2                 #: candles the return and the traded value are measured over
    baseline: int = 24              #: candles before the window whose mean traded value is the reference
    min_return_pct: float = 5.0     #: percent rise from the window's first open to its last close
    min_value_ratio: float = 3.0    #: the window's traded value over the baseline's, per candle

    def __post_init__(self):
        if self.window < 1 or self.baseline < 1:
            raise ValueError(f"surge window ({self.window}) and baseline ({self.baseline}) must be >= 1 candle")


def _measures(o: np.ndarray, c: np.ndarray, value: np.ndarray, rule: SurgeRule) -> tuple[np.ndarray, np.ndarray]:
    """Return (percent) and value ratio at every candle index (NaN where there is no full window and baseline)."""
    n, w, b = len(c), rule.window, rule.baseline
    ret = np.full(n, np.nan)
    ratio = np.full(n, np.nan)
    if n < w + b:
        return ret, ratio
    cs = np.concatenate(([0.0], np.cumsum(value, dtype=np.float64)))
    idx = np.arange(w + b - 1, n)                      # candles with a full window and baseline before them
    first = idx - w + 1
    ret[idx] = (c[idx] / o[first] - 1.0) * 100.0
    win = cs[idx + 1] - cs[first]
    base = (cs[first] - cs[first - b]) / b * w          # what w candles traded on average in the baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio[idx] = np.where(base > 0, win / base, np.nan)
    return ret, ratio


def surge_mask(candles: np.ndarray, rule: SurgeRule = SurgeRule()) -> np.ndarray:
    """bool array, one per candle of ``candles`` (``CANDLE_DTYPE`` or any records with ``o``, ``c``, ``value``,
    oldest first): True where the candle fires."""
    ret, ratio = _measures(candles["o"], candles["c"], candles["value"], rule)
    with np.errstate(invalid="ignore"):
        return (ret >= rule.min_return_pct) & (ratio >= rule.min_value_ratio)


def surge_at(candles: np.ndarray, rule: SurgeRule = SurgeRule()) -> dict | None:
    """The newest candle of ``candles`` judged: ``{"t", "return_pct", "value_ratio", "fired"}`` (``t`` Unix
    seconds, the candle's start), or None without a full window and baseline."""
    need = rule.window + rule.baseline
    if len(candles) < need:
        return None
    tail = candles[-need:]
    ret, ratio = _measures(tail["o"], tail["c"], tail["value"], rule)
    r, v = float(ret[-1]), float(ratio[-1])
    if r != r or v != v:
        return None
    return {"t": int(tail["t"][-1]), "return_pct": r, "value_ratio": v,
            "fired": r >= rule.min_return_pct and v >= rule.min_value_ratio}
