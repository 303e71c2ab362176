"""REST repairs of the candle feed: scheduling, merging, fetching outside the write lock, and
applying every trade exactly once (:class:`Repairs`, mixed into :class:`~procs.market.feed.CandleFeed`).

A repair of a market asks REST for its history from ``since`` (the start of the candle that
holds it; None = the latest page). Requests merge: the earliest start wins, a hold stays a hold,
and each merge counts (``requests``), so a fetch only finishes the repair when nothing was asked
for after it began — a gap that opened during a fetch is repaired by the next one.

While a repair is pending, the market's trades are buffered as ``[trade, state]`` in arrival
order: APPLIED (a correction repair keeps applying trades live; they are re-applied after the
REST candles replace history), HELD (a gap repair holds them until the REST candles are in, so
no candle is closed from a history known to be incomplete), BAND (outside the price band:
re-checked against the band around the REST close — a real jump comes back, a fat finger does
not). When the REST candles land, trades up to their last tick are covered by them; the rest are
applied in arrival order. When REST keeps failing for ``ingest.repair_hold_s``, HELD trades are
applied (once) and the repair goes on as a correction. A market whose REST fails backs off 2 s
on its own; the others go on.

The mixin expects the feed's attributes: ``lock`` (the write lock), ``repairs`` (market →
:class:`Repair`), ``fetch``, ``clock``, ``cfg`` (IngestConfig), ``rings``, ``backfill``,
``tf_s``, ``universe``, ``market_row``, ``covered_ms``, ``last_price``, ``drops``, ``errors``,
``_repairing`` (a lock: one runner at a time) and its ``_build`` / ``_in_band`` / ``_publish``.
"""
from __future__ import annotations

import logging
from collections import deque

import numpy as np

from .types import FetchError, Trade

log = logging.getLogger("smtm.ingest")

BUFFER_TRADES = 200_000   #: trades buffered per market during a repair (the newest are kept)
PAGE, MAX_PAGES = 200, 50  #: REST candles per page (Upbit's maximum) and pages per repair (10,000 candles)

APPLIED, HELD, BAND = 0, 1, 2   #: what became of a trade buffered during a repair


class Repair:
    """A pending repair of one market: from ``since`` (Unix s; None = the latest page).

    ``buffer`` holds ``[trade, state]`` in arrival order (APPLIED, HELD or BAND, see the module);
    ``requests`` counts the requests merged into it."""
    __slots__ = ("since", "hold", "due", "held_since", "buffer", "requests")

    def __init__(self, since: int | None, hold: bool, due: float, now: float):
        self.since, self.hold, self.due, self.held_since = since, hold, due, now
        self.buffer: deque[list] = deque(maxlen=BUFFER_TRADES)
        self.requests = 1


class Repairs:
    """The repair half of the candle feed (see the module docstring)."""

    def _buffer(self, rep: Repair | None, t: Trade, state: int) -> None:
        if rep is None:
            return  # no REST to check against (no fetch function)
        if len(rep.buffer) == rep.buffer.maxlen and rep.buffer[0][1] != APPLIED:
            self.drops["repair_overflow"] += 1   # a trade that was never applied falls out
        rep.buffer.append([t, state])

    def schedule_repair(self, code: str, since_s: int | None, *, hold: bool = False, delay_s: float = 0.3) -> None:
        """Ask for a REST repair of ``code`` from ``since_s`` (None: the latest page, for a market
        with no candle). Requests merge: the earliest start wins, a hold stays a hold."""
        if self.fetch is None:
            return
        with self.lock:
            now = self.clock.monotonic()
            due = now + delay_s
            rep = self.repairs.get(code)
            if rep is None:
                self.repairs[code] = Repair(since_s, hold, due, now)
                return
            rep.since = since_s if rep.since is None else rep.since if since_s is None else min(rep.since, since_s)
            rep.due = min(rep.due, due)
            rep.requests += 1
            if hold and not rep.hold:
                rep.hold, rep.held_since = True, now

    def warm_up(self) -> int:
        """On connect, before subscribing (no stream yet, so nothing waits): markets without a
        candle get the latest REST page now — the history the stream cannot give. Returns markets
        warmed; one that fails is retried by :meth:`run_repairs`, its trades held meanwhile."""
        with self.lock:
            fine = self.rings[self.backfill.fine]
            for code in self.universe:
                if fine.count(self.market_row[code]) == 0:
                    self._gap_repair(code)
        return self.run_repairs()

    def schedule_gap_repairs(self) -> None:
        """Data (re)started after a connect or a silence: every market with candles is repaired
        from the start of its newest one, holding its trades until the REST candles are in."""
        with self.lock:
            for code in self.universe:
                self._gap_repair(code, cold=False)

    def _gap_repair(self, code: str, cold: bool = True) -> None:
        """A held repair of ``code`` from the start of its newest candle; with none, from the latest
        REST page if ``cold``."""
        recs, _ = self.rings[self.backfill.fine].read_last(self.market_row[code], 1)
        if len(recs) or cold:
            self.schedule_repair(code, int(recs["t"][0]) if len(recs) else None, hold=True, delay_s=0.0)

    def run_repairs(self) -> int:
        """Run the due repairs: fetch without the write lock, apply with it (one caller at a
        time). Returns markets repaired."""
        with self._repairing:
            return self._run_repairs()

    def _run_repairs(self) -> int:
        now = self.clock.monotonic()
        with self.lock:
            due = [(code, rep.since, rep.requests) for code, rep in self.repairs.items() if rep.due <= now]
        done = failed = 0
        coarsest = max(self.tf_s.values())
        for code, since, token in due:
            # from the start of the coarsest candle holding `since`: every coarse candle touched is rebuilt whole
            start = 0 if since is None else since // coarsest * coarsest
            pages = 1 if since is None else MAX_PAGES
            try:
                recs, last = self.fetch(code, self.backfill.unit_min, start, pages)
            except FetchError as e:
                failed += 1
                log.warning("REST repair of %s failed (%s); retrying in 2 s", code, e)
                with self.lock:
                    self.errors += 1
                    if code in self.repairs:
                        self.repairs[code].due = self.clock.monotonic() + 2.0
                continue
            with self.lock:
                # REST covers everything from `start` unless it is the latest page or the page limit cut it
                whole = since is not None and len(recs) < pages * PAGE
                complete_from = start if whole else int(recs["t"][0]) if len(recs) else start
                done += self._finish_repair(code, token, recs, last, complete_from)
        if failed:
            self._release_stale_holds()
        if done:
            with self.lock:
                self._publish()
        return done

    def _finish_repair(self, code: str, token: int, recs: np.ndarray, last: int, complete_from: int) -> int:
        """Apply a fetch's REST candles, then the buffered trades after their last tick."""
        rep = self.repairs.get(code)
        row = self.market_row.get(code)
        if rep is None or row is None:
            return 0  # the row was reclaimed meanwhile
        last = min(last, self.clock.time_ns() // 1_000_000 + int(self.cfg.max_future_s * 1000))
        replaced = len(recs) > 0
        if replaced:
            self.backfill.apply(code, row, recs, last, complete_from)
            self.covered_ms[code] = last   # the rings now hold exactly the REST history up to here
            self.last_price[code] = float(recs["c"][-1])
        release = rep.requests == token or not rep.hold   # no newer gap asks to keep holding
        keep: deque[list] = deque(maxlen=BUFFER_TRADES)
        for e in rep.buffer:
            t, state = e
            if replaced and t.ts_ms <= last:
                continue                       # in the REST candles already
            if state == BAND:
                if not self._in_band(t):
                    continue                   # REST did not confirm it: a fat finger, dropped for good
                state = e[1] = HELD
            if state == APPLIED and replaced or state == HELD and release:
                self._build(row, t, tape=state == HELD)   # (a late one schedules a repair of its own;
                                                          # a re-applied trade is on the tape already)
                e[1] = APPLIED
            keep.append(e)
        if rep.requests == token:              # nothing asked for since the fetch began: done
            del self.repairs[code]
        else:
            rep.buffer = keep
        return 1

    def _release_stale_holds(self) -> None:
        """REST keeps failing: a market held longer than ``repair_hold_s`` gets its held trades now
        (trades outside the price band stay out until REST can tell)."""
        with self.lock:
            now = self.clock.monotonic()
            released = 0
            for code, rep in self.repairs.items():
                if rep.hold and now - rep.held_since >= self.cfg.repair_hold_s:
                    log.warning("%s: REST still failing after %.0f s; applying the held trades", code,
                                now - rep.held_since)
                    rep.hold = False
                    row = self.market_row[code]
                    for e in rep.buffer:
                        if e[1] == HELD:
                            self._build(row, e[0])
                            e[1] = APPLIED
                            released += 1
            if released:
                self._publish()
