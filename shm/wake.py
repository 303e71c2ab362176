"""Waking consumers: spin on the sequence counter, then park on a POSIX semaphore.

This is the LMAX Disruptor's "spin, then block" wait strategy across processes:

* A consumer that finds nothing new spins on the global ``seq`` of the rings it
  consumes for a short budget (``spin_us``): a write is seen within ~2 µs and no
  system call is made.
* When the budget runs out it **parks**: sets ``parked`` in its own status row,
  issues a full fence, re-checks the counters (so a write that raced the flag is not
  lost), and only then blocks on its semaphore ``/smtm.<instance>.wake.<consumer>``.
* The producer, after publishing a batch, issues a full fence and posts the
  semaphore only if that consumer's ``parked`` flag is set. The hot path therefore
  costs no system call, and an idle consumer burns no core.

Why the fences: the flag/counter exchange is Dekker's pattern (each side stores one
word, then loads the other's). x86-64 may reorder a store with a *later load* (store
buffer), so without a full barrier both sides could miss each other. :func:`full_fence`
acquires and releases an uncontended lock, which is a locked read-modify-write
instruction (a full barrier on x86-64). As a second line of defence a parked consumer
blocks with a timeout (its heartbeat period), so a wake-up can never be lost for
longer than that.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import posix_ipc

from .segment import segment_name
from .status import StatusRow, StatusTable

_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier on x86-64 (an uncontended lock's locked RMW), ~50 ns."""
    _fence_lock.acquire()
    _fence_lock.release()


def semaphore_name(instance: str, consumer: str) -> str:
    return segment_name(instance, f"wake.{consumer}")


def open_semaphore(instance: str, consumer: str) -> posix_ipc.Semaphore:
    """Create or open a consumer's wake semaphore (initial value 0, mode 0600)."""
    return posix_ipc.Semaphore(semaphore_name(instance, consumer), posix_ipc.O_CREAT, mode=0o600, initial_value=0)


class SpinThenPark:
    """Consumer side. ``changed()`` must be cheap (a few counter loads).

    ``spin_us``: how long to spin before parking (0 parks at once: the plain
    semaphore strategy). ``park_timeout_s``: longest block, so a consumer can
    heartbeat while idle.
    """

    def __init__(self, sem: posix_ipc.Semaphore, row: StatusRow | None, spin_us: float = 200.0,
                 park_timeout_s: float = 0.5, clock: Callable[[], int] = time.perf_counter_ns):
        self.sem = sem
        self.row = row
        self.spin_ns = int(spin_us * 1000)
        self.park_timeout_s = park_timeout_s
        self.clock = clock
        self.parks = 0       # times it blocked on the semaphore
        self.wakeups = 0     # times a post woke it

    def wait(self, changed: Callable[[], bool]) -> bool:
        """Return True as soon as ``changed()`` holds, False after one park timeout (or when a
        signal interrupted the park: a process's stop request never waits for the timeout)."""
        if changed():
            return True
        if self.spin_ns:
            deadline = self.clock() + self.spin_ns
            while self.clock() < deadline:
                if changed():
                    return True
        self._set_parked(True)
        full_fence()
        try:
            if changed():
                return True
            self.parks += 1
            try:
                self.sem.acquire(self.park_timeout_s)
                self.wakeups += 1
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                pass  # a signal (SIGTERM) interrupted the wait: return, so the caller sees its stop flag
        finally:
            self._set_parked(False)
        self._drain()
        return changed()

    def _set_parked(self, parked: bool) -> None:
        if self.row is not None:
            self.row.set_parked(parked)

    def _drain(self) -> None:
        # Posts that raced our un-parking would cause spurious wake-ups later: consume them.
        while True:
            try:
                self.sem.acquire(0)
            except posix_ipc.BusyError:
                return


class Waker:
    """Producer side: after publishing, post each consumer that is parked.

    ``consumers`` are process names of the status table's roster (each parks on its own
    semaphore ``/smtm.<instance>.wake.<consumer>``).
    """

    def __init__(self, instance: str, status: StatusTable, consumers: list[str]):
        self.status = status
        self.targets = [(status.row_index(c), open_semaphore(instance, c)) for c in consumers]
        self.posts = 0

    def wake(self) -> None:
        full_fence()
        parked = self.status.parked
        for idx, sem in self.targets:
            if parked[idx]:
                sem.release()
                self.posts += 1

    def close(self) -> None:
        for _, sem in self.targets:
            sem.close()
