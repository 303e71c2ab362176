"""Small tables read whole: one seqlock for the table, the header's global seq as ``version``.

For tables of a few dozen rows that readers copy entirely (``symbols``, ``signals``): the
writer bumps the table ``seq`` (odd), writes rows, bumps it (even), then bumps the version;
a reader copies all rows between two equal even ``seq`` loads.
"""
from __future__ import annotations

import numpy as np

from .segment import Layout, Segment, segment_name
from .seqlock import Seqlock

_SEQ_BYTES = 64


class SnapshotTable:
    """``writer()`` for the single writer, ``open()`` read-only. ``rows`` is a (n_rows,) view."""

    KIND = "snapshot"
    DTYPE: np.dtype = np.dtype([("x", "<i8")])
    TABLE = "snapshot"

    def __init__(self, seg: Segment, n_rows: int):
        self.seg = seg
        self.n_rows = n_rows
        self.lock = Seqlock(seg.payload("<u8", (1,), 0), seg.name)
        self.rows = seg.payload(self.DTYPE, (n_rows,), _SEQ_BYTES)

    @classmethod
    def layout(cls, n_rows: int) -> Layout:
        return Layout(kind=cls.KIND, params={"rows": n_rows, "dtype": [list(d) for d in cls.DTYPE.descr]},
                      size=cls.size(n_rows))

    @classmethod
    def size(cls, n_rows: int) -> int:
        """Payload bytes of the table."""
        return _SEQ_BYTES + n_rows * cls.DTYPE.itemsize

    @classmethod
    def writer(cls, instance: str, n_rows: int):
        seg = Segment.create_or_attach(segment_name(instance, cls.TABLE), cls.layout(n_rows))
        t = cls(seg, n_rows)
        if t.lock.repair():  # a writer died mid-write
            seg.bump_global_seq()
        return t

    @classmethod
    def open(cls, instance: str, n_rows: int):
        return cls(Segment.attach(segment_name(instance, cls.TABLE), cls.layout(n_rows)), n_rows)

    @property
    def version(self) -> int:
        """Bumped after every change (one 8-byte load)."""
        return self.seg.global_seq

    def read_all(self, max_spins: int = 10_000) -> tuple[np.ndarray, int]:
        """Consistent copy of every row and the version it belongs to. Raises SeqlockTimeout."""
        return self.lock.read(0, lambda: (self.rows.copy(), self.seg.global_seq), max_spins)

    def used(self, key: str, max_spins: int = 10_000) -> tuple[np.ndarray, int]:
        """Consistent copy of the rows whose ``key`` field is set (non-empty), and their version."""
        rows, ver = self.read_all(max_spins)
        return rows[rows[key] != b""], ver

    def write_rows(self, index, values) -> int:
        """Writer: ``rows[index] = values`` in one seqlock section; returns the new version.

        ``values`` is converted to the row dtype first, so a bad value raises before the section."""
        values = np.asarray(values, dtype=self.DTYPE) if not isinstance(values, np.ndarray) or \
            values.dtype != self.DTYPE else values
        with self.lock.section(0):
            self.rows[index] = values
        self.seg.bump_global_seq()
        return self.version

    def close(self) -> None:
        self.lock = self.rows = None
        self.seg.close()
