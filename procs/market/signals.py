"""Buy signals, evaluated on candle close from the indicator values (no I/O).

A rule looks at the previous and the current *closed* candle's indicators and the close:

``macd_cross``          MACD line crosses above its signal line (golden cross):
                        ``prev.macd <= prev.signal`` and ``cur.macd > cur.signal``
``macd_cross_rsi_bb``   (default) the golden cross, with ``RSI < signals.rsi_max`` (not
                        overbought) and ``close > bb_lower`` (not breaking down through the
                        lower Bollinger band)
``macd_above``          the MACD line is above its signal line (an up-trend) on this close:
                        fires on every close of the trend, so it trades far more often than
                        the cross (used by the crash campaign to make orders all the time)

A market's signal turns **on** when any configured rule fires, and stays on (its ``since``
and rule kept) until the MACD line closes below its signal line (dead cross), which turns it
**off**. Candles without all inputs (warm-up: NaN) never fire.
"""
from __future__ import annotations

import math

import numpy as np

# Rules are elementwise: the values may be floats (one candle) or numpy arrays (a window of
# candles, as the monitor marks them). A comparison with NaN is False, so a candle still
# warming up never fires.


def _golden(prev: dict, cur: dict):
    return (prev["macd"] <= prev["macd_signal"]) & (cur["macd"] > cur["macd_signal"])


def macd_cross(prev: dict, cur: dict, close, rsi_max: float):
    return _golden(prev, cur)


def macd_cross_rsi_bb(prev: dict, cur: dict, close, rsi_max: float):
    return _golden(prev, cur) & (cur["rsi"] < rsi_max) & (close > cur["bb_lower"])


def macd_above(prev: dict, cur: dict, close, rsi_max: float):
    return cur["macd"] > cur["macd_signal"]


RULES = {"macd_cross": macd_cross, "macd_cross_rsi_bb": macd_cross_rsi_bb, "macd_above": macd_above}
NEEDED = ("macd", "macd_signal", "rsi", "bb_lower")  #: indicator columns the rules read (:func:`complete`)


def complete(prev: dict, cur: dict):
    """Elementwise: every column a rule reads is known (not NaN) on both candles."""
    a, b, c, d = prev["macd"], prev["macd_signal"], prev["rsi"], prev["bb_lower"]
    e, f, g, h = cur["macd"], cur["macd_signal"], cur["rsi"], cur["bb_lower"]
    if type(a) is type(b) is type(c) is type(d) is type(e) is type(f) is type(g) is type(h) is float:
        # one candle (the engine, once per close): plain floats, no numpy; x == x is False for NaN only
        return a == a and b == b and c == c and d == d and e == e and f == f and g == g and h == h
    ok = True
    for k in NEEDED:
        ok = ok & ~np.isnan(prev[k]) & ~np.isnan(cur[k])
    return ok


def fired(rules: tuple[str, ...], prev: dict, cur: dict, close, rsi_max: float):
    """Which configured rule fires, elementwise, on complete candles only: for scalars the
    rule's name or "", for arrays an array of names ("" where none fires). The first rule in
    ``rules`` wins."""
    ok = complete(prev, cur)
    if type(close) is float or np.ndim(close) == 0:
        if ok:
            for name in rules:
                if RULES[name](prev, cur, close, rsi_max):
                    return name
        return ""
    out = np.full(np.shape(close), "", dtype=object)
    for name in reversed(rules):
        out[ok & RULES[name](prev, cur, close, rsi_max)] = name
    return out


class SignalState:
    """Per market: the last closed candle's indicators and whether the signal is on."""

    __slots__ = ("prev", "active", "rule", "since_t", "price")

    def __init__(self):
        self.prev: dict | None = None
        self.active = False
        self.rule = ""
        self.since_t = 0
        self.price = math.nan


def evaluate(state: SignalState, t: int, close: float, cur: dict, rules: tuple[str, ...], rsi_max: float) -> bool:
    """Fold one closed candle (start ``t`` Unix s, ``close`` KRW, ``cur`` its indicator values by
    column name). Returns True if the signal state changed."""
    prev, state.prev = state.prev, cur
    if prev is None or not complete(prev, cur):
        return False
    if state.active:
        if cur["macd"] < cur["macd_signal"]:
            state.active, state.rule = False, ""
            return True
        return False
    name = fired(rules, prev, cur, close, rsi_max)
    if name:
        state.active, state.rule, state.since_t, state.price = True, name, t, close
        return True
    return False
