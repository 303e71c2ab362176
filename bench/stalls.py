"""How often the machine itself stops a running process: a spin on each core, reading the clock, notes every gap
longer than :data:`GAP_US` between two reads.

A gap during which this thread was switched out for another task of the machine (an involuntary context switch,
``getrusage``) is the guest's own scheduler; a gap without one is the virtual CPU itself not running — the
hypervisor running something else on the physical core behind it — or the guest kernel's interrupt work. The
second kind no process priority inside the machine avoids, and every latency figure of the benchmarks sits on
top of it, so the report gives it next to the machine, measured at the start and at the end of a run (the probe
spins every core, so it never runs during a measurement). A pipeline stage caught by a 2 ms stall takes 2 ms
more.

``python -m bench.stalls [seconds]`` prints the figures.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import resource
import sys
import time

#: a gap between two clock reads longer than this is a stall (the loop's own turn is ~0.1 µs)
GAP_US = 50.0
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _probe(cpu: int, seconds: float, ready, go, out) -> None:
    """Pinned to ``cpu``, reports ready, waits for ``go`` (every probe spins at once), spins for ``seconds``;
    puts ``(cpu, [(gap µs, switched out), ...])``."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})
    ready.put(cpu)
    go.wait(30)
    clock = time.perf_counter_ns
    gap_ns = int(GAP_US * 1000)
    gaps = []
    switches = resource.getrusage(_RUSAGE).ru_nivcsw
    last = clock()
    end = last + int(seconds * 1e9)
    while last < end:
        now = clock()
        if now - last > gap_ns:
            n = resource.getrusage(_RUSAGE).ru_nivcsw
            gaps.append(((now - last) / 1000.0, n != switches))
            switches = n
            now = clock()   # the getrusage call is not the machine's
        last = now
    out.put((cpu, gaps))


def _stats(gaps: list[float], core_s: float) -> dict:
    gaps = sorted(gaps)
    pick = (lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))]) if gaps else (lambda q: 0.0)
    return {"per_s_per_core": len(gaps) / core_s, "lost_pct": 100.0 * sum(gaps) / 1e6 / core_s,
            "p50_us": pick(0.5), "p90_us": pick(0.9), "max_us": gaps[-1] if gaps else 0.0,
            "over_1ms": sum(g > 1000.0 for g in gaps)}


def measure(seconds: float = 2.0) -> dict:
    """Stalls seen by a spin on each core this process may use, all spinning at once for ``seconds``: the gaps
    with no context switch (the machine: hypervisor, interrupts) — per second per core, the share of time lost,
    p50 / p90 / max (µs), how many exceeded 1 ms — and how many were the guest's scheduler instead
    (``preempted``). ``{}`` for ``seconds`` 0; ``{"error": ...}`` if a probe could not run: it never raises, so
    a run's figures are never lost to it."""
    if seconds <= 0:
        return {}
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError) as e:
        return {"error": f"no CPU affinity here: {e}"}
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_probe, args=(c, seconds, ready, go, out), daemon=True) for c in cpus]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        got = []
        deadline = time.monotonic() + seconds + 30
        while len(got) < len(procs):
            try:
                got.append(out.get(timeout=0.5))
            except queue.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                    return {"error": f"{len(procs) - len(got)} of {len(procs)} probes gave no figures"}
    except Exception as e:   # a probe that could not start: the run goes on without these figures
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    core_s = seconds * len(cpus)
    machine = [g for _, gs in got for g, switched in gs if not switched]
    return {"seconds": seconds, "cores": len(cpus), **_stats(machine, core_s),
            "preempted": sum(switched for _, gs in got for _, switched in gs)}


def describe(s: dict) -> str:
    """One line for the report, e.g. ``"9.8/s a core, p50 0.15 / p90 0.71 / max 2.90 ms, 13 over 1 ms in 4
    core-seconds, 0.30 % of the time lost (and 2 gaps where the guest ran another task)"``."""
    if not s:
        return "–"
    if "error" in s:
        return f"not measured ({s['error']})"
    return (f"{s['per_s_per_core']:.1f}/s a core, p50 {s['p50_us'] / 1000:.2f} / p90 {s['p90_us'] / 1000:.2f} / "
            f"max {s['max_us'] / 1000:.2f} ms, {s['over_1ms']} over 1 ms in {s['seconds'] * s['cores']:.0f} "
            f"core-seconds, {s['lost_pct']:.2f} % of the time lost (and {s['preempted']} gaps where the guest ran "
            f"another task)")


if __name__ == "__main__":
    print(describe(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
