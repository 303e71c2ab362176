"""The ``symbols`` table: the market universe, with a ``version`` bumped on every change.

One segment, ``/smtm.<instance>.symbols``, one writer (today ``smtm universe set``; the
symbols process once it exists). The whole table is one seqlock section: the writer bumps
the table ``seq`` (odd), rewrites the rows, bumps it again (even) and then bumps the
header's global seq, which *is* the table ``version`` (``symbols_updated``). Readers
(ingest, later the trader) poll ``version`` with one load and copy the rows only when it
moved.

Row (:data:`SYMBOL_DTYPE`): ``code`` S16 market code; ``flags`` int32 bit set of
:data:`IN_UNIVERSE`, :data:`TRADABLE`, :data:`WARNING`, :data:`CAUTION`; ``rank`` int32
(1 = largest 24 h traded value, 0 = unranked); ``value_24h`` float64 KRW traded over 24 h;
``updated_unix_ns`` int64 when the row last changed.
"""
from __future__ import annotations

import time

import numpy as np

from .snapshot import SnapshotTable

IN_UNIVERSE = 1   #: subscribed by ingest
TRADABLE = 2      #: in the top N the trader may buy
WARNING = 4       #: Upbit investment warning (market_event.warning)
CAUTION = 8       #: any Upbit caution flag (market_event.caution.*)

SYMBOL_DTYPE = np.dtype([("code", "S16"), ("flags", "<i4"), ("rank", "<i4"), ("value_24h", "<f8"),
                         ("updated_unix_ns", "<i8")])


class SymbolsTable(SnapshotTable):
    """``writer()`` for the single writer, ``open()`` read-only."""

    KIND = "symbols"
    TABLE = "symbols"
    DTYPE = SYMBOL_DTYPE

    def read(self, max_spins: int = 10_000) -> tuple[np.ndarray, int]:
        """Consistent copy of the used rows and the version they belong to."""
        return self.used("code", max_spins)

    def universe(self) -> list[str]:
        """Market codes flagged IN_UNIVERSE, in row order."""
        rows, _ = self.read()
        return [bytes(c).decode() for c, f in zip(rows["code"], rows["flags"]) if f & IN_UNIVERSE]

    def write(self, records: list[tuple[str, int, int, float]]) -> int:
        """Writer: replace the table with ``(code, flags, rank, value_24h)`` rows; returns the new version.

        Raises ValueError for more rows than the table holds or a code longer than 16 bytes."""
        if len(records) > self.n_rows:
            raise ValueError(f"symbols: {len(records)} rows do not fit in {self.n_rows} (raise shm.rows)")
        new = np.zeros(self.n_rows, SYMBOL_DTYPE)
        now = time.time_ns()
        old = {bytes(r["code"]): r for r in self.rows}
        for i, (code, flags, rank, value) in enumerate(records):
            raw = code.encode("ascii")
            if not raw or len(raw) > 16:
                raise ValueError(f"market code {code!r} must be 1..16 ASCII bytes")
            prev = old.get(raw)
            same = prev is not None and (int(prev["flags"]), int(prev["rank"]), float(prev["value_24h"])) == \
                (flags, rank, float(value))
            new[i] = (raw, flags, rank, value, int(prev["updated_unix_ns"]) if same else now)
        return self.write_rows(slice(None), new)
