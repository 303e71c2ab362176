"""Per-row ring buffers of fixed-size numpy records, guarded by a seqlock.

Layout of a ring segment's payload (after the 1 KiB header of :mod:`shm.segment`)::

    control  (n_rows, 64 bytes)   seq <u8 @0 | count <u8 @8 | name S16 @16 | rewrites <u8 @32 |
                                  generation <u8 @40 | pad
    records  (n_rows, capacity)   of ``dtype``, 64-byte aligned

Per row, ``count`` is the number of records written (monotonic within a generation); the newest record
is at slot ``(count - 1) % capacity``. ``seq`` is the row's seqlock (odd while a write is
in progress). ``rewrites`` counts writes that changed history (records before the newest
one, e.g. a gap backfill): a consumer that keeps derived state compares it to know when
to rebuild. Each control row sits on its own 64-byte cache line.

Seqlock protocol (one writer per row, any number of readers): :mod:`shm.seqlock`; after a
batch the writer bumps the segment's global seq as well.

Rows are reclaimed, not only assigned: :meth:`RingTable.reassign_row` gives a row that belonged to
a market gone long ago to another market, inside one seqlock section: the name changes, ``count``
restarts at 0 and ``generation`` and ``rewrites`` move. A reader that keeps state per row
(the indicator) compares ``generation`` to notice; a reader that looked a row up by name checks
the name again after its copy (:meth:`RingTable.read_last_of`).
"""
from __future__ import annotations

import struct

import numpy as np

from .segment import Layout, Segment, ShmError
from .seqlock import Seqlock, SeqlockTimeout

__all__ = ["CONTROL_DTYPE", "Overrun", "RingTable", "SeqlockTimeout", "TableFull", "record_struct", "ring_layout"]

CONTROL_DTYPE = np.dtype(
    {"names": ["seq", "count", "name", "rewrites", "generation"], "formats": ["<u8", "<u8", "S16", "<u8", "<u8"],
     "offsets": [0, 8, 16, 32, 40], "itemsize": 64}
)
_ALIGN = 64


class TableFull(ShmError):
    """Every row of the table is assigned; raise its ``rows`` setting (or let rows be reclaimed)."""


class Overrun(ShmError):
    """The requested records were already overwritten (the writer lapped the reader)."""


def _round_up(n: int, k: int = _ALIGN) -> int:
    return (n + k - 1) // k * k


def ring_layout(table: str, dtype: np.dtype, n_rows: int, capacity: int) -> Layout:
    """Layout of a ring table: hashed from dtype, rows and capacity."""
    dtype = np.dtype(dtype)
    return Layout(
        kind="ring",
        params={"table": table, "dtype": [list(d) for d in dtype.descr], "rows": n_rows,
                "capacity": capacity, "control": [list(d) for d in CONTROL_DTYPE.descr]},
        size=ring_size(dtype, n_rows, capacity),
    )


def ring_size(dtype: np.dtype, n_rows: int, capacity: int) -> int:
    """Payload bytes of a ring table (control rows + records)."""
    return _round_up(n_rows * CONTROL_DTYPE.itemsize) + n_rows * capacity * np.dtype(dtype).itemsize


_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "i8": "q", "u8": "Q",
                 "f4": "f", "f8": "d"}


def record_struct(dtype: np.dtype) -> struct.Struct | None:
    """A little-endian :class:`struct.Struct` that packs a record of ``dtype`` byte for byte (fields in
    offset order, padding as pad bytes, a raw ``V`` field as bytes zero-filled to its size), or None for a
    dtype it cannot express (a field of strings, a sub-array). Packing checks every value (type and range)
    before anything is written."""
    fmt, at = "<", 0
    fields = sorted(dtype.fields.values(), key=lambda f: f[1])
    if [f[1] for f in fields] != [dtype.fields[n][1] for n in dtype.names]:
        return None   # fields not in offset order: a tuple in field order would not pack in place
    for ft, off, *_ in fields:
        raw_bytes = ft.kind == "V" and ft.names is None
        code = f"{ft.itemsize}s" if raw_bytes else _STRUCT_CODES.get(f"{ft.kind}{ft.itemsize}")
        if code is None or ft.shape or ft.byteorder == ">":
            return None
        fmt += "x" * (off - at) + code
        at = off + ft.itemsize
    st = struct.Struct(fmt + "x" * (dtype.itemsize - at))
    return st if st.size == dtype.itemsize else None


#: up to this many records, :meth:`RingTable.write_many` assigns them one by one (numpy's structured
#: slice assignment has a fixed cost of ~2.5 µs, one element ~0.25 µs)
_ELEMENTWISE = 8


class RingTable:
    """A table of ``n_rows`` rings of ``capacity`` records of ``dtype``.

    Construct with :meth:`create` (the single writer; re-attaching keeps the data when
    the layout matches) or :meth:`open` (read-only). Rows are keyed by a short name
    (a market code such as ``"KRW-BTC"``, at most 16 ASCII bytes).

    ``seqlock=False`` (readers only) copies without the protocol: for the stress test
    that shows the protocol is needed, never for real use.
    """

    def __init__(self, seg: Segment, table: str, dtype, n_rows: int, capacity: int, seqlock: bool = True):
        self.seg = seg
        self.table = table
        self.dtype = np.dtype(dtype)
        self.n_rows = n_rows
        self.capacity = capacity
        self.control = seg.payload(CONTROL_DTYPE, (n_rows,), 0)
        # Strided single-field views: element access is one aligned 8-byte load/store.
        self._seq = self.control["seq"]
        self._count = self.control["count"]
        self._names = self.control["name"]
        self._rewrites = self.control["rewrites"]
        self._generation = self.control["generation"]
        self.lock = Seqlock(self._seq, seg.name, enabled=seqlock)
        data_off = _round_up(n_rows * CONTROL_DTYPE.itemsize)
        self.data = seg.payload(self.dtype, (n_rows, capacity), data_off)
        # The same bytes as uint8: numpy copies structured records field by field (~13 µs for
        # 200 candles); copying raw bytes and viewing them as records is one memcpy (~1 µs).
        self._raw = seg.payload(np.uint8, (n_rows, capacity * self.dtype.itemsize), data_off)
        # The hot paths (one record written, a count read) go through memoryviews of those views: an item is
        # half the cost of a numpy element, a struct-packed record copied in a fifth of a structured-scalar
        # assignment.
        self._counts = memoryview(self._count)
        self._records = memoryview(self._raw.reshape(-1))
        self._struct = record_struct(self.dtype)
        self._gseq = seg.global_seq_word   # the segment's change counter: read on every look of a spinning consumer
        self._name_cache: dict[str, int] = {}

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(cls, name: str, table: str, dtype, n_rows: int, capacity: int) -> RingTable:
        """Create (or re-attach to, keeping its data) the table as its single writer.

        A row left with an odd ``seq`` by a writer that died mid-write is closed
        (made even again) so that readers do not wait on it forever.
        Raises :class:`~shm.segment.LayoutMismatch`.
        """
        seg = Segment.create_or_attach(name, ring_layout(table, dtype, n_rows, capacity))
        ring = cls(seg, table, dtype, n_rows, capacity)
        if not seg.created and ring.lock.repair():
            seg.bump_global_seq()
        return ring

    @classmethod
    def open(cls, name: str, table: str, dtype, n_rows: int, capacity: int, *, seqlock: bool = True) -> RingTable:
        """Attach read-only. Raises SegmentNotFound / SegmentNotReady / LayoutMismatch."""
        seg = Segment.attach(name, ring_layout(table, dtype, n_rows, capacity))
        return cls(seg, table, dtype, n_rows, capacity, seqlock=seqlock)

    def close(self) -> None:
        self.control = self._seq = self._count = self._names = self._rewrites = self._generation = None
        self.data = self._raw = self.lock = self._gseq = None
        for mv in (self._counts, self._records):
            mv.release()
        self.seg.close()

    # -- rows -----------------------------------------------------------------------
    @property
    def global_seq(self) -> int:
        """The segment's change counter (one 8-byte load): moves after each batch of writes (:meth:`publish`)."""
        return self._gseq[0]

    def names(self) -> list[str]:
        """Assigned row names in row order ('' for a free row)."""
        return [bytes(n).decode() for n in self._names]

    def name(self, row: int) -> str:
        """Name of ``row`` ('' if unassigned)."""
        return bytes(self._names[row]).decode()

    def row_of(self, name: str) -> int | None:
        """Row index of ``name``, or None if it has no row.

        A cached row is only re-checked (one 16-byte compare); the names are decoded again only
        on a miss (a row assigned or reassigned since)."""
        row = self._name_cache.get(name)
        if row is not None and bytes(self._names[row]) == name.encode():
            return row
        self._name_cache = {n: i for i, n in enumerate(self.names()) if n}
        return self._name_cache.get(name)

    @staticmethod
    def _check_name(name: str) -> bytes:
        raw = name.encode("ascii")
        if not raw or len(raw) > 16:
            raise ValueError(f"row name {name!r} must be 1..16 ASCII bytes")
        return raw

    def assign_row(self, name: str, row: int | None = None) -> int:
        """Writer: the row of ``name``, assigning a free one (or ``row``) if needed.

        Raises :class:`TableFull` or ValueError for a name longer than 16 bytes.
        """
        existing = self.row_of(name)
        if existing is not None:
            return existing
        raw = self._check_name(name)
        if row is None:
            free = [i for i, n in enumerate(self._names) if not bytes(n)]
            if not free:
                raise TableFull(f"{self.seg.name}: all {self.n_rows} rows are assigned; raise shm.rows")
            row = free[0]
        elif bytes(self._names[row]):
            raise ValueError(f"{self.seg.name}: row {row} already belongs to {bytes(self._names[row]).decode()}")
        with self.lock.section(row):
            self._names[row] = raw
        self.seg.bump_global_seq()
        return row

    def reassign_row(self, row: int, name: str) -> None:
        """Writer: give ``row`` to ``name`` with an empty history (one seqlock section): the name
        changes, ``count`` restarts at 0, ``generation`` and ``rewrites`` move. Readers that keep
        state per row see the new ``generation``. Raises ValueError for a bad name."""
        raw = self._check_name(name)
        with self.lock.section(row):
            self._names[row] = raw
            self._count[row] = 0
            self._generation[row] += 1
            self._rewrites[row] += 1
        self.seg.bump_global_seq()

    def count(self, row: int) -> int:
        """Records written to ``row`` (one 8-byte load)."""
        return self._counts[row]

    def generation(self, row: int) -> int:
        """The row's generation (one 8-byte load): moves when the row is reassigned."""
        return int(self._generation[row])

    def column(self, field: str) -> np.ndarray:
        """Copy of one control field of every row, uint64 shape (n_rows,): ``"count"``, ``"seq"``,
        ``"rewrites"`` (history rewrites) or ``"generation"`` (reassignments)."""
        return self.control[field].copy()

    # plain methods, not partialmethods: a consumer's poll reads two of them (a partialmethod's descriptor costs
    # more than the copy)
    def counts(self) -> np.ndarray:
        """Copy of every row's ``count``, uint64 shape (n_rows,)."""
        return self._count.copy()

    def seqs(self) -> np.ndarray:
        """Copy of every row's seqlock word, uint64 shape (n_rows,)."""
        return self._seq.copy()

    def rewrites(self) -> np.ndarray:
        """Copy of every row's history-rewrite counter, uint64 shape (n_rows,)."""
        return self._rewrites.copy()

    def generations(self) -> np.ndarray:
        """Copy of every row's generation (moves on reassignment), uint64 shape (n_rows,)."""
        return self._generation.copy()

    # -- writer ---------------------------------------------------------------------
    def write(self, row: int, index: int, record) -> None:
        """Writer: put one record at absolute ``index`` of ``row`` (one seqlock section).

        ``index == count`` appends; ``count - capacity <= index < count`` rewrites in place
        (the open candle). ``record`` is a tuple in dtype field order (the fast path: packed with
        :mod:`struct`) or a structured scalar. Raises IndexError outside that window, or the
        conversion's error (``struct.error``, ``TypeError``, ``ValueError``) for a record that does
        not fit the dtype, before touching the seqlock.
        """
        counts = self._counts
        cnt = counts[row]
        if not (cnt - self.capacity <= index <= cnt) or index < 0:
            raise IndexError(f"{self.seg.name} row {row}: index {index} outside [{max(cnt - self.capacity, 0)}, {cnt}]")
        if type(record) is tuple and self._struct is not None:
            raw = self._struct.pack(*record)
        else:
            rec = record if isinstance(record, np.void) and record.dtype == self.dtype \
                else np.array(record, dtype=self.dtype)[()]
            raw = rec.tobytes()
        sz = len(raw)
        off = (row * self.capacity + index % self.capacity) * sz
        lock = self.lock
        s = lock.begin(row)
        try:
            self._records[off:off + sz] = raw
            if index == cnt:
                counts[row] = cnt + 1
        finally:
            lock.end(row, s)

    def write_many(self, row: int, start: int, records: np.ndarray, *, truncate: bool = False) -> None:
        """Writer: put consecutive records from absolute index ``start`` (one seqlock section).

        ``start`` may exceed ``count``: the skipped indices are then filled with zero
        records (used when a consumer re-aligns to a producer that lapped it).
        ``truncate=True`` makes ``start + len(records)`` the new ``count`` even if it is
        smaller (a rewritten history that turned out shorter). Writing any record before the
        newest one bumps the row's ``rewrites`` counter.
        Raises IndexError if ``start`` lies before the window still held by the ring.
        """
        records = np.asarray(records, dtype=self.dtype)
        n = len(records)
        cnt = self._counts[row]
        if n == 0 and not truncate:
            return
        if start < cnt - self.capacity or start < 0:
            raise IndexError(f"{self.seg.name} row {row}: start {start} already overwritten (count {cnt})")
        if n > self.capacity:
            records, start, n = records[-self.capacity:], start + n - self.capacity, self.capacity
        rewrite = start < cnt - 1 or (truncate and start + n < cnt)
        gap = np.arange(max(cnt, start - self.capacity), start) % self.capacity if start > cnt else None
        blank = np.zeros(1, dtype=self.dtype) if gap is not None else None
        data, cap = self.data, self.capacity
        lock = self.lock
        s = lock.begin(row)
        try:
            if gap is not None:
                data[row, gap] = blank
            if n <= _ELEMENTWISE:   # a structured slice assignment costs ~10 element assignments
                for j in range(n):
                    data[row, (start + j) % cap] = records[j]
            else:
                i0 = start % cap
                data[row, slice(i0, i0 + n) if i0 + n <= cap else np.arange(start, start + n) % cap] = records
            if start + n > cnt or truncate:
                self._counts[row] = start + n
            if rewrite:
                self._rewrites[row] += 1
        finally:
            lock.end(row, s)

    def publish(self) -> None:
        """Writer: bump the global seq after a batch of writes (one 8-byte store)."""
        self._gseq[0] += 1

    # -- reader ---------------------------------------------------------------------
    def _copy(self, row: int, start: int, end: int) -> np.ndarray:
        n = end - start
        if n <= 0:
            return np.empty(0, dtype=self.dtype)
        i0 = start % self.capacity
        sz = self.dtype.itemsize
        raw = self._raw[row]
        if i0 + n <= self.capacity:
            out = raw[i0 * sz:(i0 + n) * sz].copy()
        else:
            out = np.concatenate((raw[i0 * sz:], raw[:(i0 + n - self.capacity) * sz]))
        return out.view(self.dtype)

    def read_last(self, row: int, n: int, max_spins: int = 100_000) -> tuple[np.ndarray, int]:
        """Copy of the newest ``min(n, count, capacity)`` records, oldest first.

        Returns ``(records, count)``: record ``k`` of the copy has absolute index
        ``count - len(records) + k``. Raises :class:`SeqlockTimeout` after ``max_spins``
        failed attempts.
        """
        def copy():
            cnt = self._counts[row]
            k = min(n, cnt, self.capacity)
            return self._copy(row, cnt - k, cnt), cnt
        return self.lock.read(row, copy, max_spins, f"row {row}")

    def read_last_of(self, name: str, n: int, max_spins: int = 100_000) -> tuple[np.ndarray, int] | None:
        """:meth:`read_last` of the row named ``name``, or None if no row (still) has that name
        (the name is checked inside the consistent read, so a row reassigned meanwhile is never
        returned under the old name)."""
        row = self.row_of(name)
        if row is None:
            return None
        raw = name.encode()

        def copy():
            if bytes(self._names[row]) != raw:
                return None
            cnt = self._counts[row]
            k = min(n, cnt, self.capacity)
            return self._copy(row, cnt - k, cnt), cnt
        return self.lock.read(row, copy, max_spins, f"row {row}")

    def read_range(self, row: int, start: int, end: int | None = None,
                   max_spins: int = 100_000) -> tuple[np.ndarray, int]:
        """Copy of records with absolute indices ``[start, min(end, count))``, oldest first.

        Returns ``(records, count)``. Raises :class:`Overrun` if ``start`` was already
        overwritten, :class:`SeqlockTimeout` as :meth:`read_last`.
        """
        def copy():
            cnt = self._counts[row]
            if start < cnt - self.capacity:
                return None, cnt   # overwritten: reported once the read proved consistent
            stop = cnt if end is None else min(end, cnt)
            return self._copy(row, start, max(start, stop)), cnt
        out, cnt = self.lock.read(row, copy, max_spins, f"row {row}")
        if out is None:
            raise Overrun(f"{self.seg.name} row {row}: index {start} overwritten "
                          f"(count {cnt}, capacity {self.capacity})")
        return out, cnt
