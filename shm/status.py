"""The ``status`` table: one row per process, each row written by that process only.

Rows are fixed by :data:`PROCESSES` (the roster), so no process has to claim a row
and the table has no shared counter. Each row carries its own seqlock; the reader
:meth:`StatusTable.read` returns a consistent copy. ``parked`` is the consumer's half
of the wake protocol (:mod:`shm.wake`): a single aligned int32 that its owner stores
on its own, outside the seqlock, and producers load.
"""
from __future__ import annotations

import enum
import os
import time

import numpy as np

from .ring import SeqlockTimeout
from .segment import Layout, Segment, segment_name

#: Row order of the status table. A new process appends its name (the layout hash changes).
PROCESSES = ("exchange", "ingest", "indicator", "symbols", "monitor")


class State(enum.IntEnum):
    """Life-cycle state a process reports in its status row."""
    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    DISCONNECTED = 3  # up, but its upstream connection is down
    STOPPING = 4
    FAILED = 5


#: One status row, 192 bytes.
#: ``heartbeat_ns`` is CLOCK_MONOTONIC ns (system-wide on Linux, so comparable across
#: processes: age = ``time.monotonic_ns() - heartbeat_ns``), written at least every second;
#: ``started_unix_ns`` wall clock; counters are cumulative since process start;
#: ``lag_ns`` is how far behind its input the process is (ingest: receive time minus the
#: message's server timestamp); ``fps`` frames per second (monitor); ``detail`` short
#: UTF-8 text (connection target, replay position, ...).
STATUS_DTYPE = np.dtype({
    "names": ["seq", "parked", "state", "pid", "heartbeat_ns", "started_unix_ns",
              "msgs_in", "msgs_out", "errors", "dropped", "reconnects", "lag_ns",
              "fps", "detail"],
    "formats": ["<u8", "<i4", "<i4", "<i8", "<i8", "<i8", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<i8", "<f8", "S88"],
    "offsets": [0, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96],
    "itemsize": 192,
})

_FIELDS = [n for n in STATUS_DTYPE.names if n not in ("seq", "parked")]


def status_layout(processes=PROCESSES) -> Layout:
    return Layout(kind="status", params={"rows": list(processes),
                                          "dtype": [list(d) for d in STATUS_DTYPE.descr]},
                  size=len(processes) * STATUS_DTYPE.itemsize)


class StatusTable:
    """Mapping of the status table. :meth:`writer` for a process's own row, :meth:`open` to read."""

    def __init__(self, seg: Segment, processes=PROCESSES):
        self.seg = seg
        self.processes = tuple(processes)
        self.rows = seg.payload(STATUS_DTYPE, (len(self.processes),), 0)
        self._seq = self.rows["seq"]
        self.parked = self.rows["parked"]

    @classmethod
    def writer(cls, instance: str) -> "StatusTable":
        """Create or attach the table read-write (every process writes its own row)."""
        seg = Segment.create_or_attach(segment_name(instance, "status"), status_layout(), shared=True)
        return cls(seg)

    @classmethod
    def open(cls, instance: str) -> "StatusTable":
        """Attach read-only."""
        return cls(Segment.attach(segment_name(instance, "status"), status_layout()))

    def row_index(self, process: str) -> int:
        try:
            return self.processes.index(process)
        except ValueError:
            raise ValueError(f"unknown process {process!r}; status rows: {', '.join(self.processes)}") from None

    def read(self, process: str, max_spins: int = 10_000) -> np.void:
        """Consistent copy of one row (structured scalar). Raises SeqlockTimeout."""
        i = self.row_index(process)
        for _ in range(max_spins):
            s1 = int(self._seq[i])
            if s1 & 1:
                continue
            rec = self.rows[i].copy()
            if int(self._seq[i]) == s1:
                return rec
        raise SeqlockTimeout(f"status row {process}: no consistent read")

    def read_all(self) -> dict[str, np.void]:
        return {p: self.read(p) for p in self.processes}

    def close(self) -> None:
        self.rows = self._seq = self.parked = None
        self.seg.close()


class StatusRow:
    """A process's own row: counters kept in Python, published by :meth:`beat`.

    Only the owning process (and within it one thread) calls :meth:`beat`.
    """

    def __init__(self, table: StatusTable, process: str):
        self.table = table
        self.process = process
        self.index = table.row_index(process)
        self.pid = os.getpid()
        self.state = State.STARTING
        self.started_unix_ns = time.time_ns()
        self.msgs_in = self.msgs_out = self.errors = self.dropped = self.reconnects = 0
        self.lag_ns = 0
        self.fps = 0.0
        self.detail = ""
        self.table.parked[self.index] = 0
        self.beat()

    def set_parked(self, parked: bool) -> None:
        """Consumer side of the wake protocol: one aligned int32 store."""
        self.table.parked[self.index] = 1 if parked else 0

    def beat(self, state: State | None = None) -> None:
        """Write the whole row (one seqlock section) with a fresh heartbeat."""
        if state is not None:
            self.state = state
        i = self.index
        rows = self.table.rows
        s = int(self.table._seq[i])
        self.table._seq[i] = s + 1
        r = rows[i]
        r["state"] = int(self.state)
        r["pid"] = self.pid
        r["heartbeat_ns"] = time.monotonic_ns()
        r["started_unix_ns"] = self.started_unix_ns
        r["msgs_in"] = self.msgs_in
        r["msgs_out"] = self.msgs_out
        r["errors"] = self.errors
        r["dropped"] = self.dropped
        r["reconnects"] = self.reconnects
        r["lag_ns"] = self.lag_ns
        r["fps"] = self.fps
        r["detail"] = self.detail.encode()[:88]
        self.table._seq[i] = s + 2

    def stopped(self) -> None:
        self.set_parked(False)
        self.beat(State.STOPPED)
