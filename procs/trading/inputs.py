"""The trader's inputs from shared memory (read-only): the trade tape, closed candles with their
indicator values, the tradable top N. Nothing is serialized: records are copied out of the rings.

:class:`ShmInputs` keeps, per market row, how far it has read:

* ``trades`` — every record appended since the last poll (:meth:`~shm.ring.RingTable.read_range`); a
  reader lapped by the writer skips what was overwritten and counts it (``missed``). At attach it
  starts at the current end: a restarted trader never re-applies old trades.
* ``indicators.<signal tf>`` — a candle at index ``k`` is closed and its indicator values are final
  once the indicator ring holds index ``k + 1`` (the indicator writes the closed candle and the new
  open one in one seqlock section). Each such candle is passed once — by its start time, so a repair
  that moves indices never makes it evaluated twice, and candles a repair fills in long after they
  closed are not evaluated as fresh signals — with the one before it, to
  :meth:`~procs.trading.engine.Engine.on_candle_close`; the candle itself comes from
  ``candles.<tf>`` at the same index (same ``t``, checked). At attach it starts after the last
  closed candle: history is not re-evaluated.
* ``symbols`` — the TRADABLE flags, when the table's version moves and it has ranked at least once.

A row given to another market (its ``generation`` moved) restarts from that row's current end.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from shm.ring import Overrun, RingTable, SeqlockTimeout
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.symbols import TRADABLE, SymbolsTable
from shm.tables import CANDLES, INDICATOR_DTYPE, INDICATORS, TRADES, aligned_indicators

from ..runtime.config import BaseConfig, tf_seconds
from .engine import Engine

_COLUMNS = INDICATOR_DTYPE.names


class ShmInputs:
    def __init__(self, base: BaseConfig, signal_tf: str):
        self.base = base
        self.tf = signal_tf
        self.tf_ms = tf_seconds(signal_tf) * 1000
        self.trades: RingTable | None = None
        self.candles: RingTable | None = None
        self.ind: RingTable | None = None
        self.symbols: SymbolsTable | None = None
        self.symbols_version = -1
        self._views: dict[str, tuple[RingTable, RingTable]] = {}   # SNAPSHOT.GET's rings, by timeframe
        self.missed = 0              # trades overwritten before the trader read them
        self.last_recv_ns: dict[str, int] = {}        # market -> CLOCK_MONOTONIC ns of its newest trade
        self.bucket_recv_ns: dict[str, tuple[int, int]] = {}  # market -> (signal-tf bucket ms, first trade's recv)
        self.last_t: dict[str, int] = {}   # market -> start of the newest candle evaluated (Unix s)
        self._gseq = (-1, -1, -1)
        #: CLOCK_MONOTONIC ns at which ingest received the trade behind the decision being made (0: unknown)
        self.trigger_ns = 0
        self.probe = None   # an object with a ``decisions`` deque (µs), when latency is measured
        self.lag_ns = 0     # the newest trade: ingest's receipt -> the engine had it (CLOCK_MONOTONIC ns)
        self.touched: set[str] = set()      # markets with new trades since the caller last cleared it
        self.closed: list[tuple[str, dict, dict]] = []   # (market, candle, indicators) evaluated since then

    # -- attach ----------------------------------------------------------------------------------
    def attach(self) -> str:
        """Attach what exists; returns "" when trades and indicators are attached, else what is missing."""
        b = self.base
        try:
            if self.trades is None:
                self.trades = TRADES.open(b.instance, None, b.shm.rows, b.shm.trades_capacity)
                self.trade_pos = self.trades.counts().astype(np.int64)
                self.trade_gen = self.trades.generations().astype(np.int64)
            if self.ind is None:
                self.candles = CANDLES.open(b.instance, self.tf, b.shm.rows, b.shm.capacity)
                self.ind = INDICATORS.open(b.instance, self.tf, b.shm.rows, b.shm.capacity)
                self.closed_pos = np.maximum(self.ind.counts().astype(np.int64) - 1, 0)  # next index to evaluate
                self.ind_gen = self.ind.generations().astype(np.int64)
        except (SegmentNotFound, SegmentNotReady) as e:
            return f"waiting for {e}"
        if self.symbols is None:
            with contextlib.suppress(SegmentNotFound, SegmentNotReady, LayoutMismatch):
                self.symbols = SymbolsTable.open(b.instance, b.shm.rows)
        return ""

    def changed(self) -> bool:
        """Anything new (three 8-byte loads)."""
        g = (self.trades.global_seq, self.ind.global_seq, self.symbols.version if self.symbols else -1)
        return g != self._gseq

    # -- polling ---------------------------------------------------------------------------------
    def poll(self, engine: Engine) -> int:
        """Feed the engine everything new; returns trades applied."""
        self._gseq = (self.trades.global_seq, self.ind.global_seq, self.symbols.version if self.symbols else -1)
        if self.symbols is None:
            self.attach()
        self._universe(engine)
        n = self._trades(engine)
        self._closes(engine)
        return n

    def _trades(self, engine: Engine) -> int:
        tr = self.trades
        counts = tr.counts().astype(np.int64)
        gens = tr.generations().astype(np.int64)
        n = 0
        for row in np.flatnonzero((counts != self.trade_pos) | (gens != self.trade_gen)):
            row = int(row)
            if gens[row] != self.trade_gen[row]:      # the row changed hands: start at its end
                self.trade_gen[row], self.trade_pos[row] = gens[row], counts[row]
                continue
            market = tr.name(row)
            got = self._read_trades(row, int(self.trade_pos[row]))
            if got is None or tr.generation(row) != gens[row] or not market:
                continue
            recs, cnt = got
            self.trade_pos[row] = cnt
            if len(recs):
                self.touched.add(market)
                self.lag_ns = time.monotonic_ns() - int(recs["recv_ns"][-1])
            for t_ms, price, vol, sid, recv in zip(recs["t_ms"].tolist(), recs["price"].tolist(),
                                                   recs["volume"].tolist(), recs["sequential_id"].tolist(),
                                                   recs["recv_ns"].tolist()):
                bucket = t_ms - t_ms % self.tf_ms
                if self.bucket_recv_ns.get(market, (-1, 0))[0] < bucket:
                    self.bucket_recv_ns[market] = (bucket, recv)
                self.last_recv_ns[market] = recv
                self.trigger_ns = recv
                engine.on_trade(market, t_ms, price, vol, sid)
                n += 1
        self.trigger_ns = 0
        return n

    def _read_trades(self, row: int, start: int) -> tuple[np.ndarray, int] | None:
        """Trades of ``row`` from ``start`` on. Lapped by the writer, it skips to an eighth of the ring
        past the oldest record still there (so a few more writes cannot lap it again) and counts what it
        missed; None if the row cannot be read consistently right now (tried again on the next poll)."""
        tr = self.trades
        for _ in range(8):
            try:
                return tr.read_range(row, start, max_spins=10_000)
            except Overrun:
                skip = tr.count(row) - tr.capacity + tr.capacity // 8
                self.missed += skip - start
                start = skip
            except SeqlockTimeout:
                return None
        return None

    def _closes(self, engine: Engine) -> None:
        ind, cand = self.ind, self.candles
        counts = ind.counts().astype(np.int64)
        gens = ind.generations().astype(np.int64)
        shrunk = counts - 1 < self.closed_pos           # history rewritten shorter (a repair)
        self.closed_pos[shrunk] = np.maximum(counts[shrunk] - 2, 0)
        for row in np.flatnonzero((counts - 1 > self.closed_pos) | (gens != self.ind_gen)):
            row = int(row)
            if gens[row] != self.ind_gen[row]:
                self.ind_gen[row], self.closed_pos[row] = gens[row], max(counts[row] - 1, 0)
                continue
            start = int(self.closed_pos[row])
            last = int(counts[row]) - 1            # candles [start, last) are closed and final
            lo = max(start - 1, 0, last - ind.capacity + 1)
            try:
                vals, _ = ind.read_range(row, lo, last, max_spins=10_000)
                bars, _ = cand.read_range(row, lo, last, max_spins=10_000)
            except Overrun:
                self.closed_pos[row] = last
                continue
            except SeqlockTimeout:
                continue      # tried again on the next poll
            market = ind.name(row)
            self.closed_pos[row] = last
            if not market or len(vals) != len(bars) or ind.generation(row) != gens[row]:
                continue
            newest = int(bars["t"][-1]) if len(bars) else 0
            for j in range(max(start - lo, 1), len(vals)):
                t = int(bars["t"][j])
                if vals["t"][j] != t or vals["t"][j - 1] != bars["t"][j - 1]:
                    continue    # candles and indicators disagree for a moment (a repair): skip
                if t <= self.last_t.get(market, 0) or t < newest - 2 * self.tf_ms // 1000:
                    continue    # evaluated already, or history a repair filled in (closed long ago)
                self.last_t[market] = t
                prev = dict(zip(_COLUMNS, vals[j - 1].tolist()))
                cur = dict(zip(_COLUMNS, vals[j].tolist()))
                bucket, recv = self.bucket_recv_ns.get(market, (0, 0))
                self.trigger_ns = recv if bucket == t * 1000 + self.tf_ms else 0   # the trade that closed it
                engine.on_candle_close(market, t, float(bars["c"][j]), prev, cur)
                self.closed.append((market, candle_dict(bars[j]), cur))
                if self.trigger_ns and self.probe is not None:
                    self.probe.decisions.append((time.monotonic_ns() - self.trigger_ns) / 1000)
        self.trigger_ns = 0

    def _universe(self, engine: Engine) -> None:
        if self.symbols is None or self.symbols.version == self.symbols_version:
            return
        rows, ver = self.symbols.read()
        self.symbols_version = ver
        if not len(rows) or not (rows["rank"] > 0).any():
            return          # not ranked yet: no universe to trade (nor to leave)
        engine.on_universe({bytes(c).decode() for c, f in zip(rows["code"], rows["flags"]) if f & TRADABLE})

    def last_candle(self, market: str) -> dict | None:
        """The newest (open) candle of the signal timeframe, as a dict, or None."""
        got = self.candles.read_last_of(market, 1) if self.candles is not None else None
        return candle_dict(got[0][0]) if got and len(got[0]) else None

    def market_data(self, market: str, tf: str, count: int) -> tuple[list[dict], list[dict]]:
        """SNAPSHOT.GET's candles: the newest ``count`` candles of ``market`` in ``tf`` (oldest first) as dicts,
        and their indicator values aligned 1:1 (None for a candle without values; NaN → None)."""
        if tf not in self._views:   # attached once per timeframe (the command thread only)
            b = self.base
            self._views[tf] = (CANDLES.open(b.instance, tf, b.shm.rows, b.shm.capacity),
                               INDICATORS.open(b.instance, tf, b.shm.rows, b.shm.capacity))
        cand, ind = self._views[tf]
        got = cand.read_last_of(market, count)
        if got is None:
            return [], []
        recs, cnt = got
        cols = _COLUMNS[1:]
        vals = aligned_indicators(ind, market, recs, cnt, cols)
        rows = zip(*(vals[c].tolist() for c in cols)) if len(recs) else ()
        aligned = [{c: (None if x != x else x) for c, x in zip(cols, r)} for r in rows]   # NaN -> None
        return [candle_dict(r) for r in recs], aligned

    def close(self) -> None:
        for t in (self.trades, self.candles, self.ind, self.symbols, *(t for v in self._views.values() for t in v)):
            if t is not None:
                t.close()


def candle_dict(rec) -> dict:
    """A ``CANDLE_DTYPE`` record as a dict of Python numbers."""
    return dict(zip(rec.dtype.names, rec.tolist()))
