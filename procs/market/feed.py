"""The candle feed: validated trades → the ``candles.<tf>`` rings (ingest's domain; no network).

:class:`CandleFeed` is the single writer of the candle rings. It takes the trades the venue
adapter parsed (:class:`~procs.market.types.MarketEvents`), aggregates each into every timeframe
(:class:`~procs.market.candles.CandleBuilder`), publishes the rings once per frame and wakes the
consumers. It owns the rows of the rings, and repairs history from REST candles fetched through
an injected ``fetch`` function (the adapter's REST client) **outside** its write lock: a slow
REST never stalls the live stream.

What a trade must pass, in order (each failure is counted under its reason in ``drops``):

* ``unknown_market`` — a market without a row;
* ``future_trade`` — a trade time more than ``ingest.max_future_s`` ahead of the receive clock
  (one trade dated in the year 3000 would otherwise open a candle that makes every later real
  trade late);
* ``duplicate`` — the same ``sequential_id`` again (the last ``dedupe_window`` per market);
* already in the REST candles of the last repair — skipped silently;
* ``price_band`` — a price more than ``ingest.price_band`` times above or below the market's last
  price: **held** — not applied, its candle re-read from REST, which is the authority (a real
  jump comes back in the REST candles and re-centres the band; a fat finger does not);
* ``late_trade`` — older than the market's newest candle in any timeframe: not applied (a closed
  candle never changes from the stream), its candle re-read from REST.

Repairs (:mod:`procs.market.repairs`). On connect, before subscribing, markets without any
candle get the latest REST page (:meth:`CandleFeed.warm_up`). A *gap* repair (when data resumes
after a (re)connect or a silence, a market added to the universe) holds the market's trades until
the REST candles are in — so no candle is ever closed from a history known to be incomplete —
then applies the REST candles and the held trades after their last tick; other markets keep
flowing meanwhile. A *correction* repair (a late or held trade) keeps applying trades live and
re-applies them after the REST candles.

Rows. Each market gets the same row in every timeframe. When the table is full, the row of the
market gone from the universe longest — at least ``ingest.reclaim_after_s`` — is reassigned
(:meth:`shm.ring.RingTable.reassign_row`: readers see a new row generation). If none may be
reclaimed yet, the markets that do not fit are reported (``table_full``, log) and retried on
every tick; the others are applied.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

from shm.ring import RingTable, TableFull
from shm.tables import CANDLES, TRADES

from ..runtime.clock import SYSTEM_CLOCK, Clock
from ..runtime.config import BaseConfig, IngestConfig, tf_seconds
from .backfill import Backfiller
from .candles import CandleBuilder
from .repairs import APPLIED, BAND, HELD, Repairs
from .types import MarketEvents, Trade

log = logging.getLogger("smtm.ingest")

#: ``fetch(market, unit_min, since_s, max_pages) -> (CANDLE_DTYPE records oldest first, last tick ms)``;
#: raises :class:`~procs.market.types.FetchError`.
Fetch = Callable[[str, int, int, int], tuple[np.ndarray, int]]

_DAY_NS = 86_400 * 10**9


class Dedupe:
    """The last ``window`` sequential_ids per market."""

    def __init__(self, window: int):
        self.window = window
        self._seen: dict[str, set] = {}
        self._order: dict[str, deque] = {}

    def seen(self, code: str, sid: int) -> bool:
        """True if (code, sid) was seen before; else remember it."""
        s = self._seen.setdefault(code, set())
        if sid in s:
            return True
        q = self._order.setdefault(code, deque())
        s.add(sid)
        q.append(sid)
        if len(q) > self.window:
            s.discard(q.popleft())
        return False

    def forget(self, code: str) -> None:
        self._seen.pop(code, None)
        self._order.pop(code, None)


class CandleFeed(Repairs):
    """Writer of ``candles.<tf>`` for every timeframe of ``base.shm``. Thread-safe: the WebSocket
    thread calls :meth:`apply`, :meth:`warm_up` (on connect, before any data) and
    :meth:`schedule_gap_repairs`; the tick thread calls :meth:`set_universe` and
    :meth:`run_repairs`. Only :meth:`run_repairs` (and so :meth:`warm_up`) waits on the network,
    never while holding the write lock."""

    def __init__(self, base: BaseConfig, cfg: IngestConfig, *, fetch: Fetch | None = None,
                 wake: Callable[[], None] = lambda: None, clock: Clock = SYSTEM_CLOCK,
                 universe: list[str] | None = None):
        self.cfg = cfg
        self.fetch = fetch
        self.wake = wake
        self.clock = clock
        self.lock = threading.RLock()         # the write lock: rings, builders, repairs
        self._repairing = threading.Lock()    # one repair runner at a time (never held with I/O by the stream)
        self.tf_s = {tf: tf_seconds(tf) for tf in base.shm.timeframes}
        self.rings: dict[str, RingTable] = {tf: CANDLES.create(base.instance, tf, base.shm.rows, base.shm.capacity)
                                            for tf in base.shm.timeframes}
        self.builders_by_tf = {tf: CandleBuilder(ring, self.tf_s[tf]) for tf, ring in self.rings.items()}
        self.builders = list(self.builders_by_tf.values())
        self.backfill = Backfiller(self.rings, self.builders_by_tf, self.tf_s)
        #: the trade tape (``trades``): every accepted trade once, same rows as the candles
        self.tape = TRADES.create(base.instance, None, base.shm.rows, base.shm.trades_capacity)
        self.recv_ns = 0   # CLOCK_MONOTONIC ns at which the frame being applied was received
        self.dedupe = Dedupe(cfg.dedupe_window)
        self.market_row: dict[str, int] = {}
        self.universe: list[str] = []     # markets with rows that are subscribed
        self.wanted: list[str] = []       # the universe asked for (may not all fit yet)
        self.table_full: list[str] = []   # wanted markets without a row yet
        self._left_at: dict[str, float] = {}
        self.drops: Counter[str] = Counter()
        self.trades = self.duplicates = self.errors = self.lag_ns = 0
        self.last_price: dict[str, float] = {}
        self.covered_ms: dict[str, int] = {}       # trades up to here are in REST candles already
        self.repairs = {}                          # market -> pending repair (procs.market.repairs)
        self._adopt_rows(clock.monotonic())
        self.set_universe(list(universe or base.markets))

    # -- universe and rows ------------------------------------------------------------------------
    def _adopt_rows(self, now: float) -> None:
        """Rows kept from an earlier run: each market keeps its row, in every timeframe (a timeframe
        added since gets the same rows); those not in the first universe may be reclaimed at once
        (they have been gone at least as long as ingest was down)."""
        fine = self.rings[self.backfill.fine]
        for row, code in enumerate(fine.names()):
            if not code:
                continue
            for ring in (*self.rings.values(), self.tape):
                if ring.row_of(code) != row:
                    try:
                        ring.assign_row(code, row)
                    except ValueError as e:
                        raise RuntimeError(f"{e}; the candle tables disagree on rows: run `smtm down`") from None
            self.market_row[code] = row
            self._left_at[code] = now - self.cfg.reclaim_after_s
            recs, _ = fine.read_last(row, 1)
            if len(recs):
                self.last_price[code] = float(recs["c"][0])

    def set_universe(self, codes: list[str]) -> bool:
        """Make ``codes`` the universe: each gets a row (the same in every timeframe); a market new
        to the rings gets a REST warm-up. Returns True if the subscribed universe changed."""
        with self.lock:
            now = self.clock.monotonic()
            for code in self.wanted:
                if code not in codes:
                    self._left_at[code] = now
                    self.repairs.pop(code, None)   # not subscribed: nothing to repair for it
            running, subscribed_before = bool(self.universe), set(self.universe)
            self.wanted = list(codes)
            missing = []
            for code in codes:
                self._left_at.pop(code, None)
                if code not in self.market_row:
                    try:
                        self.market_row[code] = self._row_for(code, now)
                    except TableFull:
                        missing.append(code)
                        continue
                if running and code not in subscribed_before:
                    self._gap_repair(code)  # new, or back after a while: its missing history comes from REST
            if missing != self.table_full and missing:
                log.error("candle tables full (%d rows): no row yet for %s; retrying as rows of markets gone "
                          "for %.0f s become free", self.rings[self.backfill.fine].n_rows, ", ".join(missing),
                          self.cfg.reclaim_after_s)
                self.errors += 1
            self.table_full = missing
            subscribed = [c for c in codes if c in self.market_row]
            self._publish(wake=False)   # row names changed; no candle did
            changed = set(subscribed) != subscribed_before   # a new rank order alone needs no resubscription
            self.universe = subscribed
            return changed

    def retry_universe(self) -> bool:
        """Try again to give rows to the markets that did not fit (tick thread)."""
        return bool(self.table_full) and self.set_universe(self.wanted)

    def _row_for(self, code: str, now: float) -> int:
        rings = [*self.rings.values(), self.tape]
        try:
            rows = {ring.assign_row(code) for ring in rings}
        except TableFull:
            gone = [(t, c) for c, t in self._left_at.items()
                    if c in self.market_row and c not in self.wanted and now - t >= self.cfg.reclaim_after_s]
            if not gone:
                raise
            left_at, old = min(gone)
            row = self.market_row.pop(old)
            for ring in rings:
                ring.reassign_row(row, code)
            for b in self.builders:
                b.reload(row, 0)
            for d in (self._left_at, self.last_price, self.covered_ms, self.repairs):
                d.pop(old, None)
            self.dedupe.forget(old)
            log.info("row %d reclaimed from %s (gone %.0f s) for %s", row, old, now - left_at, code)
            return row
        if len(rows) != 1:
            raise RuntimeError(f"market {code} has different rows across timeframes: {rows}; run `smtm down`")
        return rows.pop()

    # -- the stream (WebSocket thread) ---------------------------------------------------------------
    def apply(self, ev: MarketEvents, recv_ns: int | None = None) -> int:
        """Apply one frame's events; publish and wake once. Returns trades written to the rings.
        ``recv_ns``: CLOCK_MONOTONIC ns when the frame arrived, stamped on the trade tape: the i-th trade of a
        frame (a _LIST format batches several) gets ``recv_ns + i``, so the stamps order trades across markets."""
        for err in ev.errors:
            log.error("exchange error: %s", err)
        now_ns = self.clock.time_ns()
        with self.lock:   # counters too: the repair thread counts into them as well
            self.recv_ns = recv_ns if recv_ns is not None else int(self.clock.monotonic() * 1e9)
            self.errors += len(ev.errors)
            for why in ev.dropped:
                self.drops[why] += 1
            # tickers (live profile) carry nothing the rings keep; one of an unknown market is bad
            unknown = sum(t.code not in self.market_row for t in ev.tickers)
            if unknown:
                self.drops["bad_ticker"] += unknown
            n = 0
            for t in ev.trades:
                n += self._trade(t, now_ns)
                self.recv_ns += 1   # the trades of one frame keep their order on the tape's clock
            if n:
                self._publish()
        return n

    def _publish(self, wake: bool = True) -> None:
        """After a batch of writes (the caller holds the write lock): every ring's global seq moves,
        then the parked consumers are woken."""
        for ring in self.rings.values():
            ring.publish()
        self.tape.publish()
        if wake:
            self.wake()

    def _trade(self, t: Trade, now_ns: int) -> int:
        row = self.market_row.get(t.code)
        if row is None:
            return self._drop("unknown_market")
        if t.ts_ms * 1_000_000 > now_ns + self.cfg.max_future_s * 1e9:
            return self._drop("future_trade")
        if self.dedupe.seen(t.code, t.sequential_id):
            self.duplicates += 1
            return self._drop("duplicate")
        if t.ts_ms <= self.covered_ms.get(t.code, 0):
            return 0  # already counted in the REST candles of the last repair
        if not self._in_band(t):
            self.schedule_repair(t.code, t.ts_ms // 1000)
            self._buffer(self.repairs.get(t.code), t, BAND)
            return self._drop("price_band")
        rep = self.repairs.get(t.code)
        if rep is not None and rep.hold:
            self._buffer(rep, t, HELD)
            return 0  # applied with the REST candles
        n = self._build(row, t)
        if n and rep is not None:
            self._buffer(rep, t, APPLIED)
        if n and t.server_ms is not None:
            lag = now_ns - t.server_ms * 1_000_000
            if -_DAY_NS < lag < _DAY_NS:
                self.lag_ns = lag
        return n

    def _build(self, row: int, t: Trade, *, tape: bool = True) -> int:
        """Fold an accepted trade into every timeframe and, unless it is a re-application after a
        repair (``tape=False``), append it to the trade tape."""
        for b in self.builders:
            if b.is_late(row, t.ts_ms):
                self.schedule_repair(t.code, t.ts_ms // 1000)
                return self._drop("late_trade")
        for b in self.builders:
            b.on_trade(row, t.ts_ms, t.price, t.volume)
        if tape:
            # TRADE_DTYPE's fields, in order
            self.tape.write(row, self.tape.count(row),
                            (t.ts_ms, t.price, t.volume, t.sequential_id, self.recv_ns, t.bid, b""))
        self.trades += 1
        self.last_price[t.code] = t.price
        return 1

    def _drop(self, why: str) -> int:
        self.drops[why] += 1
        return 0

    def _in_band(self, t: Trade) -> bool:
        ref = self.last_price.get(t.code)
        return ref is None or ref / self.cfg.price_band <= t.price <= ref * self.cfg.price_band
