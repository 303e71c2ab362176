"""Indicator values aligned with the candles a reader copied: one read for every view (the monitor's
chart, ``smtm tail``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shm.ring import Overrun, RingTable


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
