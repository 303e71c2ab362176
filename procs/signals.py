"""Buy signals, evaluated on candle close from the indicator values (no I/O).

A rule looks at the previous and the current *closed* candle's indicators and the close:

``macd_cross``          MACD line crosses above its signal line (golden cross):
                        ``prev.macd <= prev.signal`` and ``cur.macd > cur.signal``
``macd_cross_rsi_bb``   (default) the golden cross, with ``RSI < signals.rsi_max`` (not
                        overbought) and ``close > bb_lower`` (not breaking down through the
                        lower Bollinger band)

A market's signal turns **on** when any configured rule fires, and stays on (its ``since``
and rule kept) until the MACD line closes below its signal line (dead cross), which turns it
**off**. Candles without all inputs (warm-up: NaN) never fire.
"""
from __future__ import annotations

import math


def _golden(prev: dict, cur: dict) -> bool:
    return prev["macd"] <= prev["macd_signal"] and cur["macd"] > cur["macd_signal"]


def macd_cross(prev: dict, cur: dict, close: float, rsi_max: float) -> bool:
    return _golden(prev, cur)


def macd_cross_rsi_bb(prev: dict, cur: dict, close: float, rsi_max: float) -> bool:
    return _golden(prev, cur) and cur["rsi"] < rsi_max and close > cur["bb_lower"]


RULES = {"macd_cross": macd_cross, "macd_cross_rsi_bb": macd_cross_rsi_bb}
_NEEDED = ("macd", "macd_signal", "rsi", "bb_lower")


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
    if prev is None or any(math.isnan(prev[k]) or math.isnan(cur[k]) for k in _NEEDED):
        return False
    if state.active:
        if cur["macd"] < cur["macd_signal"]:
            state.active, state.rule = False, ""
            return True
        return False
    for name in rules:
        if RULES[name](prev, cur, close, rsi_max):
            state.active, state.rule, state.since_t, state.price = True, name, t, close
            return True
    return False
