"""The ``status`` table: one row per process, each row written by that process only.

Rows are fixed by the roster of programs the caller passes (``procs.runtime.roster``: the data
plane knows no program names), so no process has to claim a row and the table has no shared
counter; the roster is part of the layout hash. Each row carries its own seqlock
(:mod:`shm.seqlock`); :meth:`StatusTable.read` returns a consistent copy. ``parked`` is the
consumer's half of the wake protocol (:mod:`shm.wake`): a single aligned int32 that its owner
stores on its own, outside the seqlock, and producers load.
"""
from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from .segment import Layout, Segment, segment_name
from .seqlock import Seqlock


class State(enum.IntEnum):
    """Life-cycle state a process reports in its status row (the runtime's transition table,
    ``procs.runtime.process``, says which follow which)."""
    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    DISCONNECTED = 3  # up, but its upstream connection is down
    STOPPING = 4
    FAILED = 5        # its work loop died; it exits non-zero so that supervisord restarts it


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

#: A row's owner publishes bytes ``[PAYLOAD_OFFSET, itemsize)`` (every field but ``seq`` and
#: ``parked``, which lie before it) in one seqlock section, as one copy.
PAYLOAD_OFFSET = STATUS_DTYPE.fields["state"][1]
assert all(STATUS_DTYPE.fields[n][1] >= PAYLOAD_OFFSET for n in STATUS_DTYPE.names if n not in ("seq", "parked"))

_I64 = (-(1 << 63), (1 << 63) - 1)
_U64_MAX = (1 << 64) - 1


def _i64(x: int) -> int:
    return min(max(int(x), _I64[0]), _I64[1])


def _u64(x: int) -> int:
    return min(max(int(x), 0), _U64_MAX)


def status_layout(processes: Sequence[str]) -> Layout:
    return Layout(kind="status", params={"rows": list(processes),
                                          "dtype": [list(d) for d in STATUS_DTYPE.descr]},
                  size=status_size(processes))


def status_size(processes: Sequence[str]) -> int:
    """Payload bytes of the status table."""
    return len(processes) * STATUS_DTYPE.itemsize


class StatusTable:
    """Mapping of the status table. :meth:`writer` for a process's own row, :meth:`open` to read.

    ``processes`` is the roster (row order); every process of an instance passes the same one."""

    def __init__(self, seg: Segment, processes: Sequence[str]):
        self.seg = seg
        self.processes = tuple(processes)
        self.rows = seg.payload(STATUS_DTYPE, (len(self.processes),), 0)
        # the same bytes as uint8, without seq and parked: what a beat copies in one store
        self.payload = self.rows.view(np.uint8).reshape(len(self.processes), STATUS_DTYPE.itemsize)[:, PAYLOAD_OFFSET:]
        self.lock = Seqlock(self.rows["seq"], seg.name)
        self.parked = self.rows["parked"]

    @classmethod
    def writer(cls, instance: str, processes: Sequence[str]) -> StatusTable:
        """Create or attach the table read-write (every process writes its own row)."""
        seg = Segment.create_or_attach(segment_name(instance, "status"), status_layout(processes), shared=True)
        return cls(seg, processes)

    @classmethod
    def open(cls, instance: str, processes: Sequence[str]) -> StatusTable:
        """Attach read-only."""
        return cls(Segment.attach(segment_name(instance, "status"), status_layout(processes)), processes)

    def row_index(self, process: str) -> int:
        try:
            return self.processes.index(process)
        except ValueError:
            raise ValueError(f"unknown process {process!r}; status rows: {', '.join(self.processes)}") from None

    def read(self, process: str, max_spins: int = 10_000) -> np.void:
        """Consistent copy of one row (structured scalar). Raises SeqlockTimeout."""
        i = self.row_index(process)
        return self.lock.read(i, lambda: self.rows[i].copy(), max_spins, f"row {process}")

    def read_all(self) -> dict[str, np.void]:
        return {p: self.read(p) for p in self.processes}

    def close(self) -> None:
        self.rows = self.payload = self.lock = self.parked = None
        self.seg.close()


class StatusRow:
    """A process's own row: counters kept in Python, published by :meth:`beat`.

    Only the owning process (and within it one thread) calls :meth:`beat`. A row left odd by a
    predecessor killed mid-beat is repaired on construction. ``clock`` gives the heartbeat
    (CLOCK_MONOTONIC ns: it is compared across processes, so a test clock must keep that meaning).
    """

    def __init__(self, table: StatusTable, process: str, clock: Callable[[], int] = time.monotonic_ns):
        self.table = table
        self.process = process
        self.index = table.row_index(process)
        self.clock = clock
        self.pid = os.getpid()
        self.state = State.STARTING
        self.started_unix_ns = time.time_ns()
        self.msgs_in = self.msgs_out = self.errors = self.dropped = self.reconnects = 0
        self.lag_ns = 0
        self.fps = 0.0
        self.detail = ""
        self._rec = np.zeros(1, STATUS_DTYPE)
        self._rec_bytes = self._rec.view(np.uint8)[PAYLOAD_OFFSET:]
        table.lock.repair(self.index)  # our predecessor may have died inside a beat
        self.table.parked[self.index] = 0
        self.beat()

    def set_parked(self, parked: bool) -> None:
        """Consumer side of the wake protocol: one aligned int32 store."""
        self.table.parked[self.index] = 1 if parked else 0

    def beat(self, state: State | None = None) -> None:
        """Publish the whole row (one seqlock section) with a fresh heartbeat.

        Every value is converted (and clamped to its field's range) before the section, so a
        beat can neither raise inside it nor leave the row odd."""
        if state is not None:
            self.state = state
        rec = self._rec
        rec["state"] = int(self.state)
        rec["pid"] = self.pid
        rec["heartbeat_ns"] = _i64(self.clock())
        rec["started_unix_ns"] = _i64(self.started_unix_ns)
        rec["msgs_in"] = _u64(self.msgs_in)
        rec["msgs_out"] = _u64(self.msgs_out)
        rec["errors"] = _u64(self.errors)
        rec["dropped"] = _u64(self.dropped)
        rec["reconnects"] = _u64(self.reconnects)
        rec["lag_ns"] = _i64(self.lag_ns)
        rec["fps"] = float(self.fps)
        rec["detail"] = self.detail.encode()[:88]
        i = self.index
        with self.table.lock.section(i):
            self.table.payload[i] = self._rec_bytes
