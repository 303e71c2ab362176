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
``trades``             ingest      :data:`shm.trading.TRADE_DTYPE`, the latest trades, one ring per
                                   market row (the same rows as the candles) (:data:`TRADES`)
``trader``             trader      :data:`shm.trading.TRADER_DTYPE`, the engine's state (one row)
``positions``          trader      :data:`shm.trading.POSITION_DTYPE`, open positions
``orders``             trader      :data:`shm.trading.ORDER_DTYPE`, open and recent orders
``timeline.trader``    trader      :data:`shm.trading.TIMELINE_DTYPE`, the "why" of every decision
                                   (one ring, row ``trader``) (:data:`TIMELINE`)
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

from .ring import Overrun, RingTable, ring_size
from .segment import HEADER_SIZE, segment_name
from .signals import SignalsTable
from .status import status_size
from .symbols import SymbolsTable
from .trading import TIMELINE_DTYPE, TRADE_DTYPE, OrdersTable, PositionsTable, TraderTable

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
    ``writer`` (a program name, for documentation and the CLI). A spec with
    ``per_timeframe=False`` names one table, ``<base>``, and ignores ``tf`` (pass ``None``)."""

    base: str
    dtype: np.dtype
    writer: str
    per_timeframe: bool = True

    def table(self, tf: str | None) -> str:
        return f"{self.base}.{tf}" if self.per_timeframe else self.base

    def create(self, instance: str, tf: str | None, rows: int, capacity: int) -> RingTable:
        """Writer: create or re-attach ``<base>.<tf>`` (raises LayoutMismatch)."""
        t = self.table(tf)
        return RingTable.create(segment_name(instance, t), t, self.dtype, rows, capacity)

    def open(self, instance: str, tf: str | None, rows: int, capacity: int, **kw) -> RingTable:
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
#: The latest trades per market row (``shm.trades_capacity`` each): the trader's tick source.
TRADES = RingSpec("trades", TRADE_DTYPE, "ingest", per_timeframe=False)
#: The trader's timeline: one row (``TIMELINE_ROW``) of ``shm.timeline_capacity`` entries.
TIMELINE = RingSpec("timeline.trader", TIMELINE_DTYPE, "trader", per_timeframe=False)
TIMELINE_ROW = "trader"


def table_sizes(timeframes: Sequence[str], rows: int, capacity: int, processes: Sequence[str], *,
                trades_capacity: int = 4096, orders_rows: int = 64, timeline_capacity: int = 1024) -> dict[str, int]:
    """Bytes of every segment an instance creates, by table name (headers included)."""
    out = {spec.table(tf): spec.size(rows, capacity) for spec in RINGS for tf in timeframes}
    out[TRADES.table(None)] = TRADES.size(rows, trades_capacity)
    out[TIMELINE.table(None)] = TIMELINE.size(1, timeline_capacity)
    out["symbols"] = HEADER_SIZE + SymbolsTable.size(rows)
    out["signals"] = HEADER_SIZE + SignalsTable.size(rows)
    out["trader"] = HEADER_SIZE + TraderTable.size(1)
    out["positions"] = HEADER_SIZE + PositionsTable.size(rows)
    out["orders"] = HEADER_SIZE + OrdersTable.size(orders_rows)
    out["status"] = HEADER_SIZE + status_size(processes)
    return out


def aligned_indicators(ind: RingTable, market: str, candles: np.ndarray, count: int, columns: Sequence[str],
                       max_spins: int = 100_000) -> dict[str, np.ndarray]:
    """``columns`` of ``indicators.<tf>`` for ``candles`` — the newest ``len(candles)`` of the
    ``count`` written to ``market``'s candle row — as float64 arrays aligned with them.

    The indicator ring is aligned 1:1 with the candle ring (same index = same candle); each value
    is kept only where its ``t`` equals the candle's start, so a value not computed yet, overwritten
    or of a row given to another market is NaN. Raises SeqlockTimeout as :meth:`RingTable.read_range`.
    """
    out = {c: np.full(len(candles), np.nan) for c in columns}
    row = ind.row_of(market)
    if row is None or not len(candles):
        return out
    try:
        recs, _ = ind.read_range(row, count - len(candles), count, max_spins)
    except Overrun:
        return out
    if ind.name(row) != market:  # the row changed hands during the read
        return out
    ok = recs["t"] == candles["t"][:len(recs)]
    for c in columns:
        out[c][:len(recs)] = np.where(ok, recs[c], np.nan)
    return out


def candles_with_indicators(candles: RingTable, ind: RingTable, market: str, n: int,
                            max_spins: int = 100_000) -> tuple[list[dict], list[dict], int] | None:
    """The newest ``n`` candles of ``market`` (oldest first) as dicts of Python numbers (``CANDLE_DTYPE``'s
    fields: ``t`` Unix seconds UTC, candle start; prices float64 KRW), their indicator values aligned 1:1 as
    dicts (``INDICATOR_DTYPE``'s value fields; None where a value is not computed yet, or NaN), and the count
    of candles the row had when read; None if no row has that market. What SNAPSHOT.GET and the gateway serve.
    Raises SeqlockTimeout as :meth:`RingTable.read_range`."""
    got = candles.read_last_of(market, n, max_spins)
    if got is None:
        return None
    recs, cnt = got
    cols = INDICATOR_DTYPE.names[1:]
    vals = aligned_indicators(ind, market, recs, cnt, cols, max_spins)
    rows = zip(*(vals[c].tolist() for c in cols)) if len(recs) else ()
    aligned = [{c: (None if x != x else x) for c, x in zip(cols, r, strict=True)} for r in rows]   # NaN -> None
    names = recs.dtype.names
    return [dict(zip(names, r, strict=True)) for r in recs.tolist()], aligned, cnt
