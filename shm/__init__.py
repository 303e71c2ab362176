"""The shared-memory data plane (DESIGN §2–3).

Fixed-size numpy ring buffers in POSIX shared memory, one segment per table, named
``/smtm.<instance>.<table>``, each with one writer; readers map them read-only and
copy under a seqlock. See :mod:`shm.segment` (header, layout, read-only attach),
:mod:`shm.ring` (rings and the seqlock), :mod:`shm.tables` (candle and indicator
records), :mod:`shm.status` (per-process status rows) and :mod:`shm.wake`
(spin-then-park wake-ups).
"""
from .ring import Overrun, RingTable, SeqlockTimeout, TableFull
from .segment import (LayoutMismatch, Segment, SegmentNotFound, SegmentNotReady, ShmError,
                      segment_name, unlink_instance)

__all__ = ["LayoutMismatch", "Overrun", "RingTable", "Segment", "SegmentNotFound", "SegmentNotReady",
           "SeqlockTimeout", "ShmError", "TableFull", "segment_name", "unlink_instance"]
