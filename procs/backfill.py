"""Gap backfill: repair candle history from REST (part of ingest; runs under its write lock).

When ingest reconnects, or drops a late trade, some candles may be missing trades or be
missing altogether. :meth:`Backfiller.repair` fetches the **finest** configured timeframe's
candles from ``GET /v1/candles/minutes/{unit}`` starting at ``since`` (paging with
``to``/``count``), and makes the ring agree with them:

* every ring record from the first REST candle on is replaced by the REST candles, in
  order (a candle missing in the ring is inserted, an incomplete one corrected), with the
  ``BACKFILLED`` flag (and ``GAP`` where an interval has no candle); all but the newest are
  ``CLOSED``;
* each coarser timeframe is re-aggregated from the finest ring for the buckets touched
  (exact for OHLCV, so no ``/candles/days`` call is needed);
* the candle builders reload their open candle, and the REST candle's last-tick time is
  returned: trades up to it are already counted and ingest skips them.

History rewrites bump the ring rows' ``rewrites`` counter, so the indicator rebuilds the
rows it derived from them. REST candles carry no trade count: ``n`` is 0 for them.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np

from shm.ring import RingTable
from shm.tables import BACKFILLED, CANDLE_DTYPE, CLOSED, GAP

from .candles import CandleBuilder, group_ohlcv
from .rest import RestClient

log = logging.getLogger("smtm.backfill")


def rest_to_records(rows: list[dict]) -> tuple[np.ndarray, int]:
    """Upbit REST candle rows (oldest first) → CANDLE_DTYPE records, and the last tick (ms)."""
    out = np.zeros(len(rows), CANDLE_DTYPE)
    last_tick = 0
    for i, c in enumerate(rows):
        t = int(datetime.fromisoformat(c["candle_date_time_utc"]).replace(tzinfo=timezone.utc).timestamp())
        out[i] = (t, float(c["opening_price"]), float(c["high_price"]), float(c["low_price"]),
                  float(c["trade_price"]), float(c["candle_acc_trade_volume"]), float(c["candle_acc_trade_price"]),
                  0, BACKFILLED)
        last_tick = max(last_tick, int(c.get("timestamp") or 0))
    return out, last_tick


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
    """Ingest's REST repair. ``rings``/``builders`` keyed by timeframe name; ``tf_s`` their seconds."""

    def __init__(self, rest: RestClient, rings: dict[str, RingTable], builders: dict[str, CandleBuilder],
                 tf_s: dict[str, int]):
        self.rest = rest
        self.rings = rings
        self.builders = builders
        self.tf_s = tf_s
        self.fine = min(rings, key=lambda tf: tf_s[tf])
        self.unit = tf_s[self.fine] // 60
        self.repairs = 0

    def repair(self, market: str, row: int, since_s: int | None) -> int | None:
        """Make ``market``'s rings agree with REST from ``since_s`` (None: the latest page only,
        for a cold start). Returns the last tick (ms) the REST candles cover, or None if REST had
        nothing. Raises RestBlocked / RestError / requests exceptions (the caller retries later)."""
        fine = self.rings[self.fine]
        fs = self.tf_s[self.fine]
        since = 0 if since_s is None else since_s // fs * fs
        rows = self.rest.candles(market, self.unit, since, max_pages=1 if since_s is None else 50)
        if not rows:
            return None
        recs, last_tick = rest_to_records(rows)
        replace_from(fine, row, recs, fs)
        for tf, ring in self.rings.items():
            if tf == self.fine:
                continue
            ts = self.tf_s[tf]
            b0 = int(recs["t"][0]) // ts * ts
            fine_held, _ = fine.read_last(row, fine.capacity)
            agg = aggregate(fine_held[fine_held["t"] >= b0], ts)
            if len(agg):
                replace_from(ring, row, agg, ts)
        for tf, b in self.builders.items():
            b.reload(row, last_tick)
        for ring in self.rings.values():
            ring.publish()
        self.repairs += 1
        log.info("backfilled %s from %s: %d %s candles from REST (last tick %d)", market,
                 datetime.fromtimestamp(int(recs["t"][0]), timezone.utc).strftime("%Y-%m-%d %H:%M"),
                 len(recs), self.fine, last_tick)
        return last_tick
