"""Waking consumers: spin on the sequence counter, then park on a POSIX semaphore.

This is the LMAX Disruptor's "spin, then block" wait strategy across processes:

* A consumer that finds nothing new spins on the global ``seq`` of the rings it
  consumes for a short budget (``spin_us``): a write is seen ~1 µs after the producer has it, and no
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

import os
import resource
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
        return self._park(changed)

    def _park(self, changed: Callable[[], bool]) -> bool:
        """Block on the semaphore until a post, the park timeout or a signal (the parked flag set, a full
        fence and ``changed()`` checked again first, so no write is missed); returns ``changed()``."""
        self._drain()        # posts that raced the last un-parking: consumed here, off the path of a wake-up
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
        return changed()

    def _set_parked(self, parked: bool) -> None:
        if self.row is not None:
            self.row.set_parked(parked)

    def _drain(self) -> None:
        """Consume posts left from before this park (a producer that saw the flag of the last park set after the
        wake-up it sent): each would end a later park at once, with nothing new."""
        while True:
            try:
                self.sem.acquire(0)
            except posix_ipc.BusyError:
                return


def involuntary_switches() -> int:
    """Times the kernel switched this thread out for another runnable task (``getrusage``, ~1 µs; the
    process's count where there is no per-thread one — Linux has it)."""
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)).ru_nivcsw


def running_tasks() -> int:
    """Runnable tasks on the machine now (``/proc/loadavg``'s fourth field), or 0 if it cannot be read (not
    Linux). In a container it counts the host's tasks, against the host's cores (``os.cpu_count``): a
    CPU-limited container sees contention only when the host has it."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 0


class PhasedWait(SpinThenPark):
    """Consumer side, the strategy the processes use: spin, then park — the spin budget adapted to whether
    spinning pays (the LMAX Disruptor's phased back-off; Linux's adaptive mutexes).

    Spinning pays when the next write comes sooner than the budget and this process keeps its core meanwhile.
    On a busy machine it does not: the spinner takes the core the producer needs, and the wait turns into
    scheduler time slices (measured here: p50 170 µs, p99 5 ms with one CPU hog on two cores, against 4 µs
    for parking at once). So each wait learns from the last ones:

    * **how long waits last** — an exponentially weighted mean of the time from the start of a wait until the
      data was there (or the park timed out); the budget is 1.5x that mean while the mean is under the cap —
      ``spin_us``, and never more than a tenth of ``park_timeout_s`` — (a write that comes that soon is caught
      spinning), a 2 µs probe once it is over twice the cap, and in between a spin that misses halves it (an
      idle consumer burns no core);
    * **whether spinning competes with another task** — a gap of more than 50 µs between two clock reads in
      the spin loop together with an involuntary context switch (the kernel gave the core to another task; a
      gap without one is the hypervisor or an interrupt, and spinning goes on), or a spin that missed while
      more tasks are runnable than there are cores (``/proc/loadavg``; the spin then kept a task — the
      producer, maybe — off a core). Spinning then stops for a back-off (20 ms, doubling up to 1 s while it
      keeps happening, shrinking by a quarter after each spin that catches a write), and the consumer parks
      at once, which costs one semaphore wake-up.

    While it backs off it takes the semaphore's own path (a clock read before and after the park more), and what
    a wait teaches is learnt at the start of the next one, so neither a spin's catch nor a wake-up carries the
    bookkeeping to the caller.

    No ``sched_yield`` phase between the two: measured here, a consumer that yields to a producer that is
    busy on the same core gets the core back only after the producer's time slice (p50 1.9 ms with a CPU hog
    on the other core), while a parked consumer is woken by the post at once (CFS favours a task that has
    been sleeping). The park is :meth:`SpinThenPark._park` (flag, fence, re-check, timed block): no wake-up is lost.
    Counters: ``parks``, ``wakeups``, ``spin_hits``, ``preemptions``; ``budget_ns`` is the current budget.
    """

    GAP_NS = 50_000              #: a pause this long inside the spin loop: descheduled
    PROBE_NS = 2_000             #: the smallest budget while spinning is allowed
    BACKOFF_MIN_NS, BACKOFF_MAX_NS = 20_000_000, 1_000_000_000

    def __init__(self, sem: posix_ipc.Semaphore, row: StatusRow | None, spin_us: float = 200.0,
                 park_timeout_s: float = 0.5, clock: Callable[[], int] = time.perf_counter_ns,
                 switches: Callable[[], int] | None = None, running: Callable[[], int] | None = None):
        """``switches``: this thread's involuntary context switches so far; ``running``: runnable tasks on the
        machine now — the OS's by default (tests inject their own, with ``clock``)."""
        super().__init__(sem, row, spin_us=spin_us, park_timeout_s=park_timeout_s, clock=clock)
        self.switches = switches or involuntary_switches
        self.running = running or running_tasks
        self.max_ns = self.spin_ns
        # never spin longer than a tenth of a park: an idle consumer then spends at most that share of a core
        self.cap_ns = min(self.max_ns, int(park_timeout_s * 1e8))
        self.budget_ns = self.cap_ns
        self.mean_wait_ns = float(self.max_ns)
        self.backoff_ns = 0
        self.no_spin_until = 0
        self.spin_hits = self.preemptions = 0
        self._waited, self._caught = -1, False   # how long the last wait took (ns), and whether a spin caught it
        self._nivcsw, self._nivcsw_at = self.switches(), 0
        self.cores = os.cpu_count() or 1      # the machine's, as /proc/loadavg counts the machine's tasks

    def wait(self, changed: Callable[[], bool]) -> bool:
        """Return True as soon as ``changed()`` holds; False after one park timeout, a signal, or a post left over
        from an earlier park that ended this one early (the caller simply waits again)."""
        if self._waited >= 0:   # what the last wait taught, learnt now: off the path from a write to the caller
            if self._caught:
                self.backoff_ns = self.backoff_ns * 3 // 4
            self._learn(self._waited)
            self._waited = -1
        if changed():
            return True
        clock = self.clock
        start = now = clock()
        if now < self.no_spin_until or not self.max_ns:     # backing off: the semaphore's own path
            got = self._park(changed)
            self._caught, self._waited = False, clock() - start   # learnt at the next wait, as below
            return got
        if now - self._nivcsw_at > 1_000_000:     # switches before this spin are not this spin's
            self._nivcsw, self._nivcsw_at = self.switches(), now
        deadline, last = now + self.budget_ns, now
        while True:
            # two looks per clock read: a write is seen ~0.1 µs sooner, and the time of the catch is known
            # to within one turn from ``last`` without another clock read
            if changed() or changed():
                self.spin_hits += 1
                self._caught, self._waited = True, last - start
                return True
            now = clock()
            if now - last > self.GAP_NS and self._preempted():   # the core was given to another task
                self._descheduled(now)
                break
            if now >= deadline:      # a miss: spinning may have kept the producer off this core
                if self._crowded():
                    self._descheduled(now)
                elif self.mean_wait_ns >= self.cap_ns:    # waits run past what we may spin
                    self.budget_ns = max(self.PROBE_NS, self.budget_ns // 2)
                break
            last = now
        got = self._park(changed)
        self._caught, self._waited = False, clock() - start   # a wake-up, a timeout, or a signal that ended the park
        return got

    def _learn(self, waited_ns: float) -> None:
        self.mean_wait_ns += (waited_ns - self.mean_wait_ns) / 8
        m = self.mean_wait_ns
        if m < self.cap_ns:             # writes come within the budget: spin long enough to catch them
            self.budget_ns = int(min(self.cap_ns, max(self.PROBE_NS, 1.5 * m)))
        elif m > 2 * self.cap_ns:       # they come much later: spinning only burns the core
            self.budget_ns = min(self.cap_ns, self.PROBE_NS)

    def _crowded(self) -> bool:
        """More runnable tasks than cores right now (this one included): a spin that missed then took a core
        another task wanted — the producer, maybe."""
        return self.running() > self.cores

    def _preempted(self) -> bool:
        """Whether the kernel switched this thread out for another runnable task since the last check (an
        involuntary context switch). A pause without one is the hypervisor taking the virtual CPU away, or an
        interrupt: no local task competes for the core, so spinning goes on."""
        n = self.switches()
        switched, self._nivcsw = n != self._nivcsw, n
        return switched

    def _descheduled(self, now: int) -> None:
        self.preemptions += 1
        self.backoff_ns = min(self.BACKOFF_MAX_NS, max(self.BACKOFF_MIN_NS, 2 * self.backoff_ns))
        self.no_spin_until = now + self.backoff_ns


class Waker:
    """Producer side: after publishing, post each consumer that is parked.

    ``consumers`` are process names of the status table's roster (each parks on its own
    semaphore ``/smtm.<instance>.wake.<consumer>``).
    """

    def __init__(self, instance: str, status: StatusTable, consumers: list[str]):
        self.status = status
        self.targets = [(status.row_index(c), open_semaphore(instance, c)) for c in consumers]
        self.posts = 0
        self._parked = memoryview(status.parked)   # the flags, item loads at a third of a numpy element's cost

    def wake(self) -> None:
        """After a batch is published: a full fence, then a post to each consumer whose ``parked`` flag is set
        (~0.2 µs when none is)."""
        full_fence()
        parked = self._parked
        for idx, sem in self.targets:
            if parked[idx]:
                sem.release()
                self.posts += 1

    def close(self) -> None:
        self._parked.release()
        for _, sem in self.targets:
            sem.close()
