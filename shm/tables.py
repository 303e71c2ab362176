"""The market-data tables: record dtypes and how to open them (DESIGN §3).

=================  ==========  =================================================
table              writer      record
=================  ==========  =================================================
``candles.<tf>``   ingest      :data:`CANDLE_DTYPE`, one ring per market row
``indicators.<tf>``indicator   :data:`INDICATOR_DTYPE`, aligned 1:1 with the
                               candles ring of the same row (same ``count``,
                               same index = same candle)
=================  ==========  =================================================
"""
from __future__ import annotations

import numpy as np

from .ring import RingTable
from .segment import segment_name

#: One OHLCV candle, 64 bytes.
#: ``t`` int64 Unix seconds UTC, candle start (aligned to the timeframe in UTC);
#: ``o h l c`` float64 KRW; ``v`` float64 base-currency volume; ``value`` float64 KRW
#: traded (sum of price x volume); ``n`` int32 trades; ``flags`` int32 bit set of
#: :data:`CLOSED`, :data:`BACKFILLED`, :data:`GAP`.
CANDLE_DTYPE = np.dtype([
    ("t", "<i8"), ("o", "<f8"), ("h", "<f8"), ("l", "<f8"), ("c", "<f8"),
    ("v", "<f8"), ("value", "<f8"), ("n", "<i4"), ("flags", "<i4"),
])

CLOSED = 1       #: a later trade crossed the candle's end: it will not change again
BACKFILLED = 2   #: written from REST candles, not built from trades
GAP = 4          #: one or more intervals before this candle had no candle

#: Indicator values of one candle, aligned with it (80 bytes). ``t`` int64 (copy of the
#: candle's start, Unix s UTC, so a reader can check the alignment); ``ema_fast``,
#: ``ema_slow`` float64 KRW; ``rsi`` float64 percent 0–100 (Wilder); ``macd``,
#: ``macd_signal``, ``macd_hist`` float64 KRW; ``bb_mid`` (SMA), ``bb_upper``, ``bb_lower``
#: float64 KRW. All as TA-Lib computes them (:mod:`procs.indicators`), NaN where TA-Lib's
#: lookback gives none. The open candle carries provisional values.
INDICATOR_DTYPE = np.dtype([("t", "<i8"), ("ema_fast", "<f8"), ("ema_slow", "<f8"), ("rsi", "<f8"),
                            ("macd", "<f8"), ("macd_signal", "<f8"), ("macd_hist", "<f8"),
                            ("bb_mid", "<f8"), ("bb_upper", "<f8"), ("bb_lower", "<f8")])


def candles_table(tf: str) -> str:
    return f"candles.{tf}"


def indicators_table(tf: str) -> str:
    return f"indicators.{tf}"


def create_candles(instance: str, tf: str, rows: int, capacity: int) -> RingTable:
    """Writer (ingest): create or re-attach ``candles.<tf>``."""
    t = candles_table(tf)
    return RingTable.create(segment_name(instance, t), t, CANDLE_DTYPE, rows, capacity)


def open_candles(instance: str, tf: str, rows: int, capacity: int, **kw) -> RingTable:
    """Reader: attach ``candles.<tf>`` read-only."""
    t = candles_table(tf)
    return RingTable.open(segment_name(instance, t), t, CANDLE_DTYPE, rows, capacity, **kw)


def create_indicators(instance: str, tf: str, rows: int, capacity: int) -> RingTable:
    """Writer (indicator): create or re-attach ``indicators.<tf>``."""
    t = indicators_table(tf)
    return RingTable.create(segment_name(instance, t), t, INDICATOR_DTYPE, rows, capacity)


def open_indicators(instance: str, tf: str, rows: int, capacity: int, **kw) -> RingTable:
    """Reader: attach ``indicators.<tf>`` read-only."""
    t = indicators_table(tf)
    return RingTable.open(segment_name(instance, t), t, INDICATOR_DTYPE, rows, capacity, **kw)
