"""The trader's inputs from shared memory (read-only): the trade tape, the signal timeframe's candles, the
tradable top N. Nothing is serialized: records are copied out of the rings.

What the engine is fed, and in which order — the order a backtest feeds it in
(:mod:`procs.backtest.runner`), so that a replay through the processes books what the backtest books:

* **trades** — every record appended to ``trades`` since the last poll, all markets merged in the order
  ingest received them (``recv_ns``, CLOCK_MONOTONIC; the i-th trade of a frame is stamped ``recv_ns + i``, so
  the several trades of a _LIST frame keep their order too), each once, as
  :meth:`~procs.trading.engine.Engine.on_trade`. A poll takes a consistent cut of the tape: ingest appends
  in receive order, but the rows' counts are read one after another, so a trade received earlier may show
  up in a row read before it was written while a later one shows up in a row read after. The counts are
  therefore read twice: every record received up to the newest one of the first read is visible by the
  second, and only those are applied now (the rest at the next poll). A reader lapped by the writer skips
  what was overwritten and counts it (``missed``). At attach it starts at the current end: a restarted
  trader never re-applies old trades.
* **candle closes** — taken from the trade stream itself: when a market's trade falls in a later
  signal-timeframe candle than its previous trade, that candle has closed, and right after the trade the
  newest candle of ``candles.<tf>`` that starts before the trade's candle is evaluated — ingest writes a
  trade into the candle ring before it appends it to the tape, so that candle is there and final. It
  goes to :meth:`~procs.trading.engine.Engine.on_candle_close` with its and the previous candle's
  indicator values, computed here (:class:`~procs.market.indicators.IndicatorSet`: the indicator
  process's code, with ``[indicator]``'s parameters) over the ring's closes: incrementally while the
  ring's history is the one they were computed from, rebuilt over the whole row when it is not (the first
  close of a market, a repair rewrote history, the row changed hands, the reader skipped candles). A
  decision therefore waits for no other process, and two runs over the same tape decide the same. Each
  candle is evaluated once, by its start time; the first candle a market ever has (no candle before it)
  is not evaluated. The indicator process computes the same values for the monitor and SNAPSHOT.GET.
* **symbols** — the TRADABLE flags, when the table's version moves and it has ranked at least once
  (before the trades of the same poll).

A row given to another market (its ``generation`` moved) restarts from that row's current end.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from shm.ring import Overrun, RingTable, SeqlockTimeout
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.symbols import TRADABLE, SymbolsTable
from shm.tables import CANDLES, INDICATOR_DTYPE, INDICATORS, TRADES, candles_with_indicators

from ..market.indicators import IndicatorSet
from ..runtime.config import BaseConfig, IndicatorConfig, tf_seconds
from .engine import Engine

_COLUMNS = INDICATOR_DTYPE.names
VALUE_COLUMNS = _COLUMNS[1:]
#: how long a read waits for a writer caught mid-write (preempted: two cores, six processes) before it gives up
#: for this poll — only a writer killed mid-write stays there longer (the row is then read again on its restart)
READ_PATIENCE_S = 0.5


class _Indicators:
    """One market's indicator values over the ring's closes: the set, the newest candle fed (Unix s), the ring
    row's generation and rewrites they were computed under, and the newest values (dict)."""
    __slots__ = ("set", "t", "gen", "rewrites", "values")

    def __init__(self, ind_set: IndicatorSet, gen: int, rewrites: int):
        self.set, self.t, self.gen, self.rewrites, self.values = ind_set, None, gen, rewrites, None

    def feed(self, t: int, close: float) -> dict:
        self.t = t
        self.values = dict(zip(VALUE_COLUMNS, self.set.update(close), strict=True))
        return self.values


class ShmInputs:
    def __init__(self, base: BaseConfig, signal_tf: str, indicators: IndicatorConfig | None = None):
        self.base = base
        self.tf = signal_tf
        self.tf_ms = tf_seconds(signal_tf) * 1000
        self.ind_cfg = indicators or IndicatorConfig()
        self.trades: RingTable | None = None
        self.candles: RingTable | None = None
        self.symbols: SymbolsTable | None = None
        self.symbols_version = -1
        self._views: dict[str, tuple[RingTable, RingTable]] = {}   # SNAPSHOT.GET's rings, by timeframe
        self.missed = 0              # trades overwritten before the trader read them
        self.bucket: dict[str, int] = {}   # market -> signal-tf candle (start, ms) of its newest trade
        self.row_market: dict[int, str] = {}   # trade row -> the market it was read for
        self.last_t: dict[str, int] = {}   # market -> start of the newest candle evaluated (Unix s)
        self.values: dict[str, _Indicators] = {}
        self.rebuilds = 0            # indicator values computed over a whole row again
        self.read_waits = 0          # reads that found a writer mid-write and waited
        self._gseq = (-1, -1)
        #: CLOCK_MONOTONIC ns at which ingest received the trade behind the decision being made (0: unknown)
        self.trigger_ns = 0
        self.probe = None   # an object with a ``decisions`` deque (µs), when latency is measured
        self.stage = None   # a StageSamples (procs.runtime.stamps): µs from each trade's arrival to its decision
        self.lag_ns = 0     # the newest trade: ingest's receipt -> the engine had it (CLOCK_MONOTONIC ns)
        self.touched: set[str] = set()      # markets with new trades since the caller last cleared it
        self.closed: list[tuple[str, dict, dict]] = []   # (market, candle, indicators) evaluated since then

    # -- attach ----------------------------------------------------------------------------------
    def attach(self) -> str:
        """Attach what exists; returns "" when the trade tape and the candles are attached, else what is missing."""
        b = self.base
        try:
            if self.trades is None:
                self.trades = tr = TRADES.open(b.instance, None, b.shm.rows, b.shm.trades_capacity)
                self.trade_gen = tr.generations().astype(np.int64)   # before the counts (see _trades)
                self.trade_pos = tr.counts().astype(np.int64)
                for row in np.flatnonzero(self.trade_pos).tolist():
                    self._seed(row)
            if self.candles is None:
                self.candles = CANDLES.open(b.instance, self.tf, b.shm.rows, b.shm.capacity)
        except (SegmentNotFound, SegmentNotReady) as e:
            return f"waiting for {e}"
        if self.symbols is None:
            with contextlib.suppress(SegmentNotFound, SegmentNotReady, LayoutMismatch):
                self.symbols = SymbolsTable.open(b.instance, b.shm.rows)
        return ""

    def changed(self) -> bool:
        """Anything new (two 8-byte loads)."""
        return (self.trades.global_seq, self.symbols.version if self.symbols else -1) != self._gseq

    # -- polling ---------------------------------------------------------------------------------
    def poll(self, engine: Engine) -> int:
        """Feed the engine everything new; returns trades applied."""
        self._gseq = (self.trades.global_seq, self.symbols.version if self.symbols else -1)
        if self.symbols is None:
            self.attach()
        self._universe(engine)
        return self._trades(engine)

    def _seed(self, row: int) -> None:
        """Where the trader starts reading ``row`` (attach, or the row given to another market): its market's
        candle is the one of the newest trade already on the tape, so the first trade it reads in a later
        candle closes that one — a restarted trader evaluates the candle that was open when it stopped."""
        tr = self.trades
        old = self.row_market.pop(row, None)
        if old is not None:
            self.bucket.pop(old, None)
        market = tr.name(row)
        if not market:
            return
        self.row_market[row] = market
        self.bucket.pop(market, None)
        pos = int(self.trade_pos[row])
        try:
            recs, _ = self._patient(tr.read_range, row, max(pos - 1, 0), pos)
        except (Overrun, SeqlockTimeout):
            return
        if len(recs) and tr.generation(row) == self.trade_gen[row]:
            t_ms = int(recs["t_ms"][-1])
            self.bucket[market] = t_ms - t_ms % self.tf_ms

    def _trades(self, engine: Engine) -> int:
        tr = self.trades
        # generations before counts: a row reassigned in between shows its old generation with a count that
        # went back, which is skipped below and read from its start next time (read the other way round, the
        # new generation would come with the old market's count and the new market's first trades be lost)
        gens = tr.generations().astype(np.int64)
        counts = tr.counts().astype(np.int64)
        parts: list[tuple[str, int, np.ndarray]] = []      # (market, row, records) to apply
        for row in np.flatnonzero((counts != self.trade_pos) | (gens != self.trade_gen)).tolist():
            if gens[row] != self.trade_gen[row]:      # the row changed hands: start at its end
                self.trade_gen[row], self.trade_pos[row] = gens[row], counts[row]
                self._seed(row)
                continue
            if counts[row] < self.trade_pos[row]:     # a count never goes back within a generation: the row
                self.trade_pos[row] = counts[row]     # changed hands while we read it (see above); its end
                continue
            market = self.row_market[row] = tr.name(row)
            got = self._read_trades(row, int(self.trade_pos[row]), int(counts[row]))
            if got is None or tr.generation(row) != gens[row] or not market:
                continue
            recs, cnt = got
            self.trade_pos[row] = cnt
            if len(recs):
                parts.append((market, row, recs))
        if not parts:
            return 0
        now = tr.counts().astype(np.int64)
        if now.tobytes() != counts.tobytes():     # (a third of the cost of numpy's elementwise compare and any)
            self._cut(parts, now)
        self._apply(engine, parts)
        return sum(len(p[2]) for p in parts)

    def _cut(self, parts: list, now: np.ndarray) -> None:
        """The consistent cut (module docstring): adds to ``parts`` the records that the second read of the
        counts (``now``) shows and that were received no later than the newest record of ``parts``; records
        received later stay for the next poll."""
        newest = max(int(recs["recv_ns"][-1]) for _, _, recs in parts)
        tr = self.trades
        for row in np.flatnonzero(now > self.trade_pos).tolist():
            start = int(self.trade_pos[row])
            got = self._read_trades(row, start, int(now[row]))
            if got is None or tr.generation(row) != self.trade_gen[row]:
                continue
            recs, end = got
            keep = int(np.searchsorted(recs["recv_ns"], newest, side="right"))   # a row's records: received in order
            self.trade_pos[row] = end - len(recs) + keep      # past what a lapped read skipped (counted once)
            if keep:
                market = self.row_market[row] = tr.name(row)
                parts.append((market, row, recs[:keep]))

    def _apply(self, engine: Engine, parts: list) -> None:
        """Every record of ``parts`` in receive order (rows merged), each followed by the close it makes."""
        if len(parts) == 1:
            market = parts[0][0]
            names = None
            recs = parts[0][2]
        else:
            # joined as bytes: numpy concatenates structured arrays promoting their dtypes pairwise, ~7 µs a part
            recs = np.concatenate([p[2].view(np.uint8) for p in parts]).view(parts[0][2].dtype)
            which = np.repeat(np.arange(len(parts)), [len(p[2]) for p in parts])
            order = np.argsort(recs["recv_ns"], kind="stable")
            recs, names = recs[order], [parts[k][0] for k in which[order].tolist()]
        recvs = recs["recv_ns"].tolist()
        self.lag_ns = time.monotonic_ns() - recvs[-1]    # in receive order: the newest is the last
        tf_ms, bucket_of, on_trade, stage = self.tf_ms, self.bucket, engine.on_trade, self.stage
        for k, (t_ms, price, vol, sid, recv) in enumerate(zip(
                recs["t_ms"].tolist(), recs["price"].tolist(), recs["volume"].tolist(),
                recs["sequential_id"].tolist(), recvs)):
            if names is not None:
                market = names[k]
            self.touched.add(market)
            self.trigger_ns = recv
            on_trade(market, t_ms, price, vol, sid)
            bucket = t_ms - t_ms % tf_ms
            last = bucket_of.get(market)
            if last is None or bucket > last:
                bucket_of[market] = bucket
                if last is not None:     # the market's previous candle has closed
                    self._close(engine, market, bucket)
            if stage is not None:
                stage.add((time.monotonic_ns() - recv) / 1000.0)
        self.trigger_ns = 0

    def _patient(self, read, *args):
        """``read(*args, max_spins=...)`` retried, yielding the CPU, while the row's seqlock stays odd, for up
        to :data:`READ_PATIENCE_S`; then the :class:`SeqlockTimeout` propagates. Giving up at the first timeout
        would leave what the row holds out of this poll, and so change the order the engine sees trades and
        closes in (``read_waits`` counts the waits)."""
        deadline = 0.0
        while True:
            try:
                return read(*args, max_spins=2_000)
            except SeqlockTimeout:
                self.read_waits += 1
                now = time.monotonic()
                deadline = deadline or now + READ_PATIENCE_S
                if now >= deadline:
                    raise
                time.sleep(0.0001)

    def _read_trades(self, row: int, start: int, end: int | None = None) -> tuple[np.ndarray, int] | None:
        """Trades of ``row`` from ``start`` (up to ``end``). Lapped by the writer, it skips to an eighth of the
        ring past the oldest record still there (so a few more writes cannot lap it again) and counts what it
        missed; None if the row cannot be read consistently right now (tried again on the next poll).
        Returns the records and the index after the last one returned."""
        tr = self.trades
        for _ in range(8):
            try:
                recs, cnt = self._patient(tr.read_range, row, start, end)
                return recs, start + len(recs)
            except Overrun:
                skip = tr.count(row) - tr.capacity + tr.capacity // 8
                self.missed += skip - start
                start = skip
            except SeqlockTimeout:
                return None
        return None

    def _close(self, engine: Engine, market: str, bucket_ms: int) -> None:
        """``market``'s newest candle starting before ``bucket_ms`` has closed: evaluate it (once)."""
        cand = self.candles
        row = cand.row_of(market)
        if row is None:
            return
        gen, rewrites = cand.generation(row), int(cand.rewrites()[row])
        try:
            recs, _ = self._patient(cand.read_last, row, 4)
            before = np.flatnonzero(recs["t"] * 1000 < bucket_ms)
            if len(before) < 2 < len(recs):    # the trader lags behind the candles: look further back
                recs, _ = self._patient(cand.read_last, row, cand.capacity)
                before = np.flatnonzero(recs["t"] * 1000 < bucket_ms)
        except SeqlockTimeout:
            return
        if not len(before) or cand.name(row) != market or cand.generation(row) != gen:
            return
        j = int(before[-1])
        t = int(recs["t"][j])
        if t <= self.last_t.get(market, 0):
            return      # evaluated already
        self.last_t[market] = t
        close = float(recs["c"][j])
        st = self.values.get(market)
        if (st is not None and j > 0 and st.t == int(recs["t"][j - 1]) and st.gen == gen
                and st.rewrites == rewrites):
            prev, cur = st.values, st.feed(t, close)
        else:
            prev, cur = self._rebuild(market, row, gen, rewrites, t)
            if cur is None:
                return
        if prev is None:
            return      # the market's first candle: nothing before it to compare with
        engine.on_candle_close(market, t, close, prev, cur)
        self.closed.append((market, candle_dict(recs[j]), cur))
        if self.trigger_ns and self.probe is not None:
            self.probe.decisions.append((time.monotonic_ns() - self.trigger_ns) / 1000)

    def _rebuild(self, market: str, row: int, gen: int, rewrites: int, t: int) -> tuple[dict | None, dict | None]:
        """Indicator values over every candle of the row up to the one starting at ``t``: (values at the candle
        before it or None, values at it), or (None, None) if the row cannot be read consistently now."""
        cand = self.candles
        try:
            recs, _ = self._patient(cand.read_last, row, cand.capacity)
        except SeqlockTimeout:
            return None, None
        recs = recs[recs["t"] <= t]
        if not len(recs) or int(recs["t"][-1]) != t or cand.generation(row) != gen:
            return None, None
        self.rebuilds += 1
        st = self.values[market] = _Indicators(IndicatorSet(**self.ind_cfg.periods()), gen, rewrites)
        prev = None
        for tt, c in zip(recs["t"].tolist(), recs["c"].tolist()):
            prev = st.values
            st.feed(tt, c)
        return prev, st.values

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
        got = candles_with_indicators(*self._views[tf], market, count)
        return ([], []) if got is None else got[:2]

    def close(self) -> None:
        for t in (self.trades, self.candles, self.symbols, *(t for v in self._views.values() for t in v)):
            if t is not None:
                t.close()


def candle_dict(rec) -> dict:
    """A ``CANDLE_DTYPE`` record as a dict of Python numbers."""
    return dict(zip(rec.dtype.names, rec.tolist()))
