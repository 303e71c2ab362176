"""The shared-memory data plane (DESIGN §2–3). Imports nothing from ``procs``.

Fixed-size numpy ring buffers in POSIX shared memory, one segment per table, named
``/smtm.<instance>.<table>``, each with one writer; readers map them read-only and
copy under a seqlock. See :mod:`shm.segment` (header, layout, read-only attach),
:mod:`shm.seqlock` (the one write section and consistent-read loop), :mod:`shm.ring`
(per-row rings), :mod:`shm.snapshot` (small tables read whole: :mod:`shm.symbols`,
:mod:`shm.signals`), :mod:`shm.status` (per-process status rows), :mod:`shm.tables`
(the registry of tables and their records) and :mod:`shm.wake` (spin-then-park wake-ups).
"""
from .ring import Overrun, RingTable, TableFull
from .segment import LayoutMismatch, Segment, SegmentNotFound, SegmentNotReady, ShmError, segment_name, unlink_instance
from .seqlock import Seqlock, SeqlockTimeout

__all__ = ["LayoutMismatch", "Overrun", "RingTable", "Segment", "SegmentNotFound", "SegmentNotReady",
           "Seqlock", "SeqlockTimeout", "ShmError", "TableFull", "segment_name", "unlink_instance"]
