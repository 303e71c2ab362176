"""The consumers' wait strategy: the adaptive spin budget follows the waits and stops spinning when the core is
taken away (a fake clock and semaphore), and under contention no wake-up is lost (real processes)."""
from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time

import numpy as np
import posix_ipc

from procs.runtime.roster import STATUS_ROWS
from shm.status import StatusRow, StatusTable
from shm.tables import CANDLE_DTYPE, CANDLES
from shm.wake import PhasedWait, Waker, open_semaphore


class Clock:
    """perf_counter_ns stand-in: each read advances 200 ns; ``jump`` makes the next read come that much later."""
    def __init__(self):
        self.ns, self.pending = 0, 0

    def __call__(self) -> int:
        self.ns += 200 + self.pending
        self.pending = 0
        return self.ns


class Sem:
    """A semaphore whose post arrives at ``clock.post_at`` (ns): acquire blocks until then (the clock moves).
    ``pending``: posts already made (a producer's late post), each taken at once by an acquire."""
    def __init__(self, clock: Clock):
        self.clock, self.post_at, self.pending = clock, None, 0

    def acquire(self, timeout=None):
        if self.pending:
            self.pending -= 1
            return
        if self.post_at is None or (timeout is not None and timeout == 0):
            if timeout:
                self.clock.ns += int(timeout * 1e9)      # nothing posted: the park times out
            raise posix_ipc.BusyError()
        self.clock.ns = max(self.clock.ns, self.post_at)
        self.post_at = None


class Machine:
    """The OS signals PhasedWait reads: this thread's involuntary switches, the runnable tasks."""
    def __init__(self):
        self.switches, self.running = 0, 1


def _wait_for(w: PhasedWait, clock: Clock, after_ns: int, jump_at: int | None = None, machine=None,
              switched: bool = True):
    """One wait whose data comes ``after_ns`` after it starts (a post wakes it if it parked); ``jump_at``: the
    thread is descheduled for 100 µs that far into the wait (by another task if ``switched``)."""
    due = clock.ns + after_ns
    w.sem.post_at = due

    def changed():
        if jump_at is not None and clock.ns >= due - after_ns + jump_at and not getattr(changed, "jumped", False):
            changed.jumped = True
            clock.pending = 100_000
            machine.switches += switched
        return clock.ns >= due
    assert w.wait(changed)
    w.sem.post_at = None


def test_the_budget_follows_the_waits_and_spinning_stops_when_the_core_is_taken():
    clock, machine = Clock(), Machine()
    w = PhasedWait(Sem(clock), None, spin_us=200.0, park_timeout_s=0.5, clock=clock,
                   switches=lambda: machine.switches, running=lambda: machine.running)
    for _ in range(40):                       # writes every 50 µs: caught spinning
        _wait_for(w, clock, 50_000)
    assert w.spin_hits >= 39 and 50_000 < w.budget_ns <= 200_000
    for _ in range(60):                       # writes every 2 ms: spinning would only burn the core
        _wait_for(w, clock, 2_000_000)
    assert w.budget_ns == PhasedWait.PROBE_NS and w.parks >= 55
    for _ in range(40):                       # back to 50 µs: it learns to spin again
        _wait_for(w, clock, 50_000)
    assert w.budget_ns > 50_000
    hits = w.spin_hits
    _wait_for(w, clock, 50_000, jump_at=10_000, machine=machine, switched=False)   # the hypervisor paused it:
    _wait_for(w, clock, 50_000)                                                    # no back-off, it spins on
    assert w.preemptions == 0 and w.spin_hits == hits + 1
    hits = w.spin_hits
    _wait_for(w, clock, 50_000, jump_at=10_000, machine=machine)   # another task took the core ...
    assert w.preemptions == 1 and w.no_spin_until > clock.ns
    parks = w.parks
    _wait_for(w, clock, 50_000)                      # ... so the next waits park at once (back-off 20 ms)
    assert w.parks == parks + 1 and w.spin_hits == hits
    for _ in range(500):                             # the back-off passes: spinning again
        _wait_for(w, clock, 50_000)
    assert w.spin_hits > hits
    machine.running = 3                              # more runnable tasks than cores, and a spin misses:
    parks, misses = w.parks, w.preemptions           # it backs off too
    _wait_for(w, clock, 400_000)
    assert w.preemptions == misses + 1 and w.parks == parks + 1


def _consumer(instance, n, out):
    st = StatusTable.writer(instance, STATUS_ROWS)
    ring = CANDLES.open(instance, "30m", 2, 4096)
    w = PhasedWait(open_semaphore(instance, "indicator"), StatusRow(st, "indicator"), spin_us=200.0,
                   park_timeout_s=5.0)
    seen, got, worst = ring.global_seq, 0, 0
    deadline = time.monotonic() + 30
    while got < n and time.monotonic() < deadline:
        # False: a park timed out (5 s: a lost wake-up, seen in ``worst``) or a stale post woke it early
        w.wait(lambda: ring.global_seq != seen)   # noqa: B023 - called at once
        now = time.perf_counter_ns()
        seen = ring.global_seq
        recs, _ = ring.read_range(0, got)
        if len(recs):   # a publish may come after its record was already read at the wake before: nothing new
            worst = max(worst, now - int(recs["t"].min()))
        got += len(recs)
    out.put((got, worst, w.parks, w.preemptions))


def test_no_wake_up_is_lost_under_contention(instance):
    """A producer writes at random intervals (0-2 ms) while a CPU hog takes one of the cores; the consumer parks
    with a 5 s timeout, so a lost wake-up would show as a wait of seconds: every write is seen, the slowest
    well under that."""
    ring = CANDLES.create(instance, "30m", 2, 4096)
    ring.assign_row("KRW-BTC")
    st = StatusTable.writer(instance, STATUS_ROWS)
    waker = Waker(instance, st, ["indicator"])
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    n = 600
    p = ctx.Process(target=_consumer, args=(instance, n, out), daemon=True)
    try:
        p.start()
        time.sleep(0.3)
        rng = np.random.default_rng(7)
        rec = np.zeros(1, CANDLE_DTYPE)
        for i in range(n):
            time.sleep(float(rng.uniform(0, 0.002)))
            rec["t"], rec["n"] = time.perf_counter_ns(), i
            ring.write(0, i, rec[0])
            ring.publish()
            waker.wake()
        got, worst, parks, _ = out.get(timeout=60)
    finally:
        hog.kill()
        hog.wait()
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
        waker.close()
    assert got == n and parks > 0
    assert worst < 1e9, f"a write waited {worst / 1e9:.1f} s: a wake-up was lost"


def test_an_idle_consumer_stops_spinning_whatever_the_settings():
    """No write comes: with a long spin allowed and a park not much longer, the budget still shrinks to the probe
    (it never spins longer than a tenth of a park, and a miss halves it while waits run past the budget)."""
    for spin_us, park_s in ((100_000.0, 0.05), (100_000.0, 0.15), (200.0, 0.25)):
        clock = Clock()
        w = PhasedWait(Sem(clock), None, spin_us=spin_us, park_timeout_s=park_s, clock=clock,
                       switches=lambda: 0, running=lambda: 1)
        spun = []
        for _ in range(40):
            t0 = clock.ns
            assert not w.wait(lambda: False)
            spun.append(clock.ns - t0 - int(park_s * 1e9))
        assert w.budget_ns == PhasedWait.PROBE_NS, (spin_us, park_s)
        assert max(spun) <= park_s * 1e8 + 1_000 and spun[-1] <= PhasedWait.PROBE_NS + 1_000


def test_a_post_left_from_an_earlier_park_does_not_end_the_next_one():
    """A producer that saw the parked flag of an earlier park may post after that park ended: the post is drained
    before the next park, which then waits for its own wake-up (here: its timeout) instead of returning at once."""
    clock = Clock()
    w = PhasedWait(Sem(clock), None, spin_us=0.0, park_timeout_s=0.5, clock=clock,
                   switches=lambda: 0, running=lambda: 1)
    w.sem.pending = 2
    t0 = clock.ns
    assert not w.wait(lambda: False)
    assert w.sem.pending == 0 and clock.ns - t0 >= 0.5e9 and w.parks == 1
