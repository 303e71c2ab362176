"""Independent references for the indicator and signal tests: TA-Lib (the test oracle) and a
direct statement of the buy rules over TA-Lib's arrays."""
from __future__ import annotations

import numpy as np
import talib

COLUMNS = ("ema_fast", "ema_slow", "rsi", "macd", "macd_signal", "macd_hist", "bb_mid", "bb_upper", "bb_lower")


def talib_reference(c: np.ndarray) -> dict[str, np.ndarray]:
    m, s, h = talib.MACD(c, 12, 26, 9)
    up, mid, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    return {"ema_fast": talib.EMA(c, 12), "ema_slow": talib.EMA(c, 26), "rsi": talib.RSI(c, 14), "macd": m,
            "macd_signal": s, "macd_hist": h, "bb_mid": mid, "bb_upper": up, "bb_lower": lo}


def rel_err(a, b):
    ok = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), ok), "NaN pattern differs from TA-Lib's lookback"
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300)))




def expected_signals(c: np.ndarray, rsi_max: float = 70.0, rsi_filter: bool = True):
    """(on-times as candle indices, final active) from TA-Lib arrays, written independently."""
    m, s, _ = talib.MACD(c, 12, 26, 9)
    r = talib.RSI(c, 14)
    _, _, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    active, ons = False, []
    for i in range(1, len(c)):
        if np.isnan([m[i - 1], s[i - 1], m[i], s[i], r[i - 1], r[i], lo[i - 1], lo[i]]).any():
            continue
        if active:
            active = not m[i] < s[i]
        elif m[i - 1] <= s[i - 1] and m[i] > s[i] and (not rsi_filter or (r[i] < rsi_max and c[i] > lo[i])):
            active = True
            ons.append(i)
    return ons, active
