"""The ``signals`` table: the buyable set, one row per market row of ``candles.<tf>``.

Written by the indicator process only (on candle close). Row (:data:`SIGNAL_DTYPE`):
``code`` S16; ``active`` int32 (1 = a buy signal is on); ``rule`` S24 name of the rule
that fired; ``since_t`` int64 Unix s UTC, start of the candle whose close turned it on;
``price`` float64 KRW, that close; ``evaluated_t`` int64 start of the last closed candle
evaluated. ``version`` (the header's global seq) moves on every change.
"""
from __future__ import annotations

import numpy as np

from .snapshot import SnapshotTable

SIGNAL_DTYPE = np.dtype([("code", "S16"), ("active", "<i4"), ("rule", "S24"), ("since_t", "<i8"),
                         ("price", "<f8"), ("evaluated_t", "<i8")])


class SignalsTable(SnapshotTable):
    KIND = "signals"
    TABLE = "signals"
    DTYPE = SIGNAL_DTYPE

    def buyable(self) -> np.ndarray:
        """Consistent copy of the rows whose signal is on."""
        rows, _ = self.read_all()
        return rows[(rows["active"] == 1) & (rows["code"] != b"")]
