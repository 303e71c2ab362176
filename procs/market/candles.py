"""Candle aggregation: trades → OHLCV candles in a ``candles.<tf>`` ring (ingest's core).

Upbit's rules: a candle's start is aligned to the timeframe in UTC
(``t = floor(ts / tf) * tf``); the open candle is updated in place until a trade
crosses its end; an interval without trades has no candle (the next candle carries
:data:`~shm.tables.GAP`).

Open and close follow trade time, not arrival: a trade older than the candle's earliest
trade so far becomes its open, one at least as new as its latest becomes its close (Upbit
does not guarantee delivery order).

Late trades: a trade older than the market's newest candle in *any* timeframe (it
belongs to a candle that was already closed) is **not** written to any timeframe:
the feed (:mod:`procs.market.feed`) checks :meth:`CandleBuilder.is_late` on every builder first and drops the trade
whole, so a closed candle never changes and the roll-ups stay consistent with the
finest timeframe. (Gap backfill from REST, which may rewrite history with
the ``BACKFILLED`` flag, is a separate path.)
"""
from __future__ import annotations

import numpy as np

from shm.ring import RingTable
from shm.tables import CANDLE_DTYPE, CLOSED, GAP


def group_ohlcv(bucket: np.ndarray, o, h, l, c, v, value) -> tuple[np.ndarray, np.ndarray, dict]:
    """Roll consecutive rows with the same ``bucket`` (sorted, oldest first) into one OHLCV row.

    Inputs are equal-length arrays (prices float64 KRW, ``v`` base volume, ``value`` KRW).
    Returns ``(starts, ends, cols)``: the first/one-past-last row of each group and the
    columns ``t`` (the bucket) ``o h l c v value`` of the grouped rows. Used for every
    roll-up: coarser timeframes, the exchange's REST units, candles of recorded trades.
    """
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(bucket)]
    cols = {"t": bucket[starts], "o": o[starts], "c": c[ends - 1], "h": np.maximum.reduceat(h, starts),
            "l": np.minimum.reduceat(l, starts), "v": np.add.reduceat(v, starts),
            "value": np.add.reduceat(value, starts)}
    return starts, ends, cols


class CandleBuilder:
    """Builds one timeframe's candles for every market row of ``ring`` (its single writer).

    State is the ring itself: on construction the open candle of each row is read back,
    so a restarted ingest continues the candle it was building.
    """

    def __init__(self, ring: RingTable, tf_seconds: int):
        self.ring = ring
        self.tf = tf_seconds
        # per row: [index, t, o, h, l, c, v, value, n, flags] of the newest candle, or None
        self._open: list[list | None] = [None] * ring.n_rows
        # per row: trade times (ms) of the current open and close; after a restart the open's
        # time is unknown (taken as the candle start) and the next trade sets the close
        self._first_ts: list[int] = [0] * ring.n_rows
        self._last_ts: list[int] = [0] * ring.n_rows
        self._buf = np.zeros(2, dtype=CANDLE_DTYPE)
        for row in range(ring.n_rows):
            self.reload(row, 0)

    def reload(self, row: int, last_ts_ms: int) -> None:
        """Re-read the row's newest candle after its history was rewritten (backfill);
        ``last_ts_ms`` is the time of the last trade it already contains."""
        cnt = self.ring.count(row)
        if cnt == 0:
            self._open[row] = None
            return
        rec = self.ring.read_last(row, 1)[0][0]
        self._open[row] = [cnt - 1, int(rec["t"]), float(rec["o"]), float(rec["h"]), float(rec["l"]),
                           float(rec["c"]), float(rec["v"]), float(rec["value"]), int(rec["n"]), int(rec["flags"])]
        self._first_ts[row] = int(rec["t"]) * 1000
        self._last_ts[row] = max(last_ts_ms, int(rec["t"]) * 1000)

    def is_late(self, row: int, ts_ms: int) -> bool:
        """True if a trade at ``ts_ms`` falls before the row's newest candle."""
        st = self._open[row]
        return st is not None and ts_ms // 1000 // self.tf * self.tf < st[1]

    def on_trade(self, row: int, ts_ms: int, price: float, volume: float) -> bool:
        """Apply one trade (``ts_ms`` ms UTC, ``price`` KRW, ``volume`` base units).

        Returns True if the ring was written, False for a late trade. The caller validates the
        inputs (finite, positive, a time the ring can hold). The builder's state changes only
        after the ring write succeeded: a write that raises (a value the record cannot hold)
        leaves the builder and the ring as they were.
        """
        t = ts_ms // 1000 // self.tf * self.tf
        st = self._open[row]
        buf = self._buf
        if st is not None and t == st[1]:
            new = list(st)
            if price > new[3]:
                new[3] = price
            if price < new[4]:
                new[4] = price
            first, last = self._first_ts[row], self._last_ts[row]
            if ts_ms < first:
                new[2], first = price, ts_ms
            if ts_ms >= last:
                new[5], last = price, ts_ms
            new[6] += volume
            new[7] += price * volume
            new[8] += 1
            self.ring.write(row, new[0], tuple(new[1:]))   # packed (and checked) before anything is written
            self._open[row] = new
            self._first_ts[row], self._last_ts[row] = first, last
        elif st is None or t > st[1]:
            new = [0 if st is None else st[0] + 1, t, price, price, price, price, volume, price * volume, 1,
                   GAP if st is not None and t > st[1] + self.tf else 0]
            buf[1] = tuple(new[1:])  # converts (and may raise) before anything is written
            if st is not None and not st[9] & CLOSED:
                closed = list(st)
                closed[9] |= CLOSED
                buf[0] = tuple(closed[1:])
                self.ring.write_many(row, st[0], buf)  # close + open in one seqlock section
            else:
                self.ring.write(row, new[0], buf[1])
            self._open[row] = new
            self._first_ts[row] = self._last_ts[row] = ts_ms
        else:
            return False
        return True
