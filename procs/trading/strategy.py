"""The strategy (seed "Upbit TradeBot MVP"): MACD entries on candle close, take-profit / stop-loss on
every trade, the dead-cross exit on candle close. Pure functions over plain values, so the trader,
the tests and the backtest run the same decisions.

* **Entry** — on a closed candle of the signal timeframe, for a market tradable in the ``symbols``
  table without a position: the preset's rule of :mod:`procs.market.signals` (``macd_cross``: the
  MACD line crosses above its signal line; ``macd_cross_rsi_bb``: that, with RSI below ``rsi_max``
  and the close above the lower Bollinger band).
* **Take-profit / stop-loss** — on every trade of a market with a position: the price at or above
  ``tp`` (average price + ``take_profit_pct``) or at or below ``sl`` (average price - ``stop_loss_pct``).
* **Dead cross** — on a closed candle: the MACD line closed below its signal line
  (``exit_on_dead_cross``).
* **Left the top N** — a market no longer tradable (the engine decides, per ``trader.on_leave``).
"""
from __future__ import annotations

from ..market.signals import complete, fired
from ..runtime.presets import StrategyParams

TAKE_PROFIT, STOP_LOSS, DEAD_CROSS = "take_profit", "stop_loss", "dead_cross"
LEFT_TOP_N, MANUAL, KILL = "left_top_n", "manual", "kill"
#: why a position was sold (the risk trips' are ``daily_loss`` and ``drawdown``; ``kill``: KILL with flatten)
EXIT_REASONS = (TAKE_PROFIT, STOP_LOSS, DEAD_CROSS, LEFT_TOP_N, MANUAL, "daily_loss", "drawdown", KILL)


def entry_rule(p: StrategyParams, prev: dict, cur: dict, close: float) -> str:
    """The rule that fires on this closed candle ("" if none, or if an input is still NaN)."""
    return fired((p.rule,), prev, cur, close, p.rsi_max)


def exit_on_trade(price: float, tp: float, sl: float) -> str:
    """``take_profit`` / ``stop_loss`` if this trade's price reaches the position's TP / SL, else ""."""
    if price >= tp > 0:
        return TAKE_PROFIT
    if sl > 0 and price <= sl:
        return STOP_LOSS
    return ""


def exit_on_close(p: StrategyParams, prev: dict, cur: dict) -> str:
    """``dead_cross`` if the MACD line closed below its signal line (inputs complete), else ""."""
    if not p.exit_on_dead_cross or not complete(prev, cur):
        return ""
    return DEAD_CROSS if cur["macd"] < cur["macd_signal"] else ""


def inputs(prev: dict, cur: dict, close: float) -> tuple:
    """The recorded inputs of an evaluation: (close, macd, macd_signal, prev_macd, prev_signal, rsi,
    bb_lower), NaN → None (SQL NULL)."""
    vals = (close, cur["macd"], cur["macd_signal"], prev["macd"], prev["macd_signal"], cur["rsi"], cur["bb_lower"])
    return tuple([None if v is None or v != v else float(v) for v in vals])     # v != v: NaN
