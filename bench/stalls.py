"""How often the machine itself stops a running process: a spin on each core, reading the clock, notes every gap
longer than :data:`GAP_US` between two reads.

On an otherwise idle virtual machine such a gap is the hypervisor running something else on the physical core
behind a virtual CPU (or the guest kernel's own interrupt work): a stall that no process priority inside the
machine avoids. Every latency figure of the benchmarks lives on top of these, so the report gives them next to
the machine (measured at the start and at the end of a run: the probe spins every core, so it never runs during
a measurement). A pipeline stage hit by a 2 ms stall takes 2 ms more; with stalls of that size a few times a
second on each core, a p99 over a busy second cannot be much lower than they are.

``python -m bench.stalls [seconds]`` prints the figures.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time

import numpy as np

#: a gap between two clock reads longer than this is a stall (the loop's own turn is ~0.1 µs)
GAP_US = 50.0


def _probe(cpu: int, seconds: float, out) -> None:
    """Spin on ``cpu`` for ``seconds``; put ``(cpu, gaps in µs)``."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})
    clock = time.perf_counter_ns
    gap_ns = int(GAP_US * 1000)
    gaps = []
    last = clock()
    end = last + int(seconds * 1e9)
    while last < end:
        now = clock()
        if now - last > gap_ns:
            gaps.append((now - last) / 1000.0)
        last = now
    out.put((cpu, gaps))


def measure(seconds: float = 2.0) -> dict:
    """Stalls seen by a spin on each core this process may use, all at once for ``seconds``: per second per core,
    the share of time lost, the gaps' p50 / p90 / max (µs) and how many exceeded 1 ms. ``{}`` for ``seconds`` 0
    or where it cannot run (no ``sched_setaffinity``)."""
    if seconds <= 0:
        return {}
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return {}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_probe, args=(c, seconds, out), daemon=True) for c in cpus]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=seconds + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    gaps = np.array([g for _, gs in got for g in gs], np.float64)
    core_s = seconds * len(cpus)
    return {"seconds": seconds, "cores": len(cpus), "per_s_per_core": len(gaps) / core_s,
            "lost_pct": 100.0 * gaps.sum() / 1e6 / core_s,
            "p50_us": float(np.percentile(gaps, 50)) if len(gaps) else 0.0,
            "p90_us": float(np.percentile(gaps, 90)) if len(gaps) else 0.0,
            "max_us": float(gaps.max()) if len(gaps) else 0.0, "over_1ms": int((gaps > 1000.0).sum())}


def describe(s: dict) -> str:
    """One line for the report: ``"5.2/s a core, p50 0.15 / p90 0.7 / max 2.9 ms, 13 over 1 ms, 0.30 % lost"``."""
    if not s:
        return "–"
    return (f"{s['per_s_per_core']:.1f}/s a core, p50 {s['p50_us'] / 1000:.2f} / p90 {s['p90_us'] / 1000:.2f} / "
            f"max {s['max_us'] / 1000:.2f} ms, {s['over_1ms']} over 1 ms in {s['seconds'] * s['cores']:.0f} "
            f"core-seconds, {s['lost_pct']:.2f} % of the time lost")


if __name__ == "__main__":
    print(describe(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
