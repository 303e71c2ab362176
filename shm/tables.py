"""The registry of the data plane's tables: record dtypes, writers, and how to open them (DESIGN §3).

=====================  ==========  ==============================================================
table                  writer      record
=====================  ==========  ==============================================================
``candles.<tf>``       ingest      :data:`CANDLE_DTYPE`, one ring per market row (:data:`CANDLES`)
``indicators.<tf>``    indicator   :data:`INDICATOR_DTYPE`, aligned 1:1 with the candles ring of
                                   the same row (same ``count``, same index = same candle)
                                   (:data:`INDICATORS`)
``symbols``            symbols     :data:`shm.symbols.SYMBOL_DTYPE`, the universe (snapshot table)
``signals``            indicator   :data:`shm.signals.SIGNAL_DTYPE`, the buyable set (snapshot)
``status``             every       :data:`shm.status.STATUS_DTYPE`, one row per program
                       process
=====================  ==========  ==============================================================

:data:`RINGS` and :func:`table_sizes` are the one list of every segment an instance creates: the
CLI lists tables from it and the configuration checks that they fit in ``/dev/shm``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .ring import RingTable, ring_size
from .segment import HEADER_SIZE, segment_name
from .signals import SignalsTable
from .status import status_size
from .symbols import SymbolsTable

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
#: float64 KRW. All as TA-Lib computes them (``procs.market.indicators``), NaN where TA-Lib's
#: lookback gives none. The open candle carries provisional values.
INDICATOR_DTYPE = np.dtype([("t", "<i8"), ("ema_fast", "<f8"), ("ema_slow", "<f8"), ("rsi", "<f8"),
                            ("macd", "<f8"), ("macd_signal", "<f8"), ("macd_hist", "<f8"),
                            ("bb_mid", "<f8"), ("bb_upper", "<f8"), ("bb_lower", "<f8")])


@dataclass(frozen=True)
class RingSpec:
    """A family of ring tables, one per timeframe: ``<base>.<tf>``, records of ``dtype``, one
    ``writer`` (a program name, for documentation and the CLI)."""

    base: str
    dtype: np.dtype
    writer: str

    def table(self, tf: str) -> str:
        return f"{self.base}.{tf}"

    def create(self, instance: str, tf: str, rows: int, capacity: int) -> RingTable:
        """Writer: create or re-attach ``<base>.<tf>`` (raises LayoutMismatch)."""
        t = self.table(tf)
        return RingTable.create(segment_name(instance, t), t, self.dtype, rows, capacity)

    def open(self, instance: str, tf: str, rows: int, capacity: int, **kw) -> RingTable:
        """Reader: attach ``<base>.<tf>`` read-only (raises SegmentNotFound / SegmentNotReady /
        LayoutMismatch)."""
        t = self.table(tf)
        return RingTable.open(segment_name(instance, t), t, self.dtype, rows, capacity, **kw)

    def size(self, rows: int, capacity: int) -> int:
        """Bytes of one segment of this family (header included)."""
        return HEADER_SIZE + ring_size(self.dtype, rows, capacity)


CANDLES = RingSpec("candles", CANDLE_DTYPE, "ingest")
INDICATORS = RingSpec("indicators", INDICATOR_DTYPE, "indicator")
RINGS = (CANDLES, INDICATORS)


def table_sizes(timeframes: Sequence[str], rows: int, capacity: int, processes: Sequence[str]) -> dict[str, int]:
    """Bytes of every segment an instance creates, by table name (headers included)."""
    out = {spec.table(tf): spec.size(rows, capacity) for spec in RINGS for tf in timeframes}
    out["symbols"] = HEADER_SIZE + SymbolsTable.size(rows)
    out["signals"] = HEADER_SIZE + SignalsTable.size(rows)
    out["status"] = HEADER_SIZE + status_size(processes)
    return out
