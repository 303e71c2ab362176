"""History merge: make the candle rings agree with REST candles (the feed's repair; no I/O here).

When ingest reconnects, drops a late trade or holds one outside the price band, some candles may
be missing trades or be missing altogether. The feed (:mod:`procs.market.feed`) fetches the
**finest** timeframe's candles from REST through the venue adapter (outside its write lock) and
hands them to :meth:`Backfiller.apply`, which makes the rings agree with them:

* every ring record from the first REST candle on is replaced by the REST candles, in
  order (a candle missing in the ring is inserted, an incomplete one corrected), with the
  ``BACKFILLED`` flag (and ``GAP`` where an interval has no candle); all but the newest are
  ``CLOSED``;
* each coarser timeframe is re-aggregated from the REST candles for the buckets they cover
  whole (exact for OHLCV, so no ``/candles/days`` call is needed; the feed fetches from the start
  of the coarsest bucket, so every touched bucket is whole);
* the candle builders reload their open candle; trades up to the REST candles' last tick are
  already counted in them.

History rewrites bump the ring rows' ``rewrites`` counter, so the indicator rebuilds the
rows it derived from them. REST candles carry no trade count: ``n`` is 0 for them.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np

from shm.ring import RingTable
from shm.tables import BACKFILLED, CANDLE_DTYPE, CLOSED, GAP

from .candles import CandleBuilder, group_ohlcv

log = logging.getLogger("smtm.ingest")


def aggregate(fine: np.ndarray, tf_s: int) -> np.ndarray:
    """Roll fine candles (oldest first) up into ``tf_s`` buckets aligned in UTC (flags merged)."""
    if len(fine) == 0:
        return np.zeros(0, CANDLE_DTYPE)
    starts, _, cols = group_ohlcv(fine["t"] // tf_s * tf_s, fine["o"], fine["h"], fine["l"], fine["c"],
                                  fine["v"], fine["value"])
    out = np.zeros(len(starts), CANDLE_DTYPE)
    for k, col in cols.items():
        out[k] = col
    out["n"] = np.add.reduceat(fine["n"], starts)
    out["flags"] = np.bitwise_or.reduceat(fine["flags"] & BACKFILLED, starts)
    return out


def _mark(recs: np.ndarray, prev_t: int | None, tf_s: int) -> None:
    """Set CLOSED on all but the newest record and GAP after an interval without a candle."""
    if len(recs) == 0:
        return
    recs["flags"][:-1] |= CLOSED
    prev = np.r_[prev_t if prev_t is not None else recs["t"][0] - tf_s, recs["t"][:-1]]
    recs["flags"] |= np.where(recs["t"] > prev + tf_s, GAP, 0).astype(recs["flags"].dtype)


def replace_from(ring: RingTable, row: int, new: np.ndarray, tf_s: int) -> int:
    """Replace the row's records whose start is >= ``new[0].t`` by ``new``; returns the first index written."""
    held, cnt = ring.read_last(row, ring.capacity)
    first = cnt - len(held)
    keep = int(np.searchsorted(held["t"], new["t"][0], side="left"))
    _mark(new, int(held["t"][keep - 1]) if keep else None, tf_s)
    i0 = first + keep
    ring.write_many(row, i0, new, truncate=True)
    return i0


class Backfiller:
    """The feed's history merge. ``rings``/``builders`` keyed by timeframe name; ``tf_s`` their seconds."""

    def __init__(self, rings: dict[str, RingTable], builders: dict[str, CandleBuilder], tf_s: dict[str, int]):
        self.rings = rings
        self.builders = builders
        self.tf_s = tf_s
        self.fine = min(rings, key=lambda tf: tf_s[tf])
        self.unit_min = tf_s[self.fine] // 60
        self.repairs = 0

    def apply(self, market: str, row: int, recs: np.ndarray, last_tick_ms: int, complete_from: int) -> None:
        """Replace ``market``'s history from ``recs[0].t`` on by ``recs`` (CANDLE_DTYPE, finest
        timeframe, oldest first) and rebuild the coarser timeframes from ``recs`` — not from the
        fine ring, which may hold fewer of them than an outage spans. ``complete_from`` (Unix s) is
        where the REST candles begin to cover everything: only coarse buckets that start there or
        later are rebuilt (one cut by it would come out partial). The caller holds the write lock
        and publishes."""
        replace_from(self.rings[self.fine], row, recs, self.tf_s[self.fine])
        for tf, ring in self.rings.items():
            if tf == self.fine:
                continue
            ts = self.tf_s[tf]
            b0 = -(-complete_from // ts) * ts   # the first bucket wholly inside the REST candles
            agg = aggregate(recs[recs["t"] >= b0], ts)
            if len(agg):
                replace_from(ring, row, agg, ts)
        for b in self.builders.values():
            b.reload(row, last_tick_ms)
        self.repairs += 1
        log.info("backfilled %s from %s: %d %s candles from REST (last tick %d)", market,
                 datetime.fromtimestamp(int(recs["t"][0]), UTC).strftime("%Y-%m-%d %H:%M"),
                 len(recs), self.fine, last_tick_ms)
