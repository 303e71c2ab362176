"""Collects the figures the benchmarks measure and prints p50/p99 and ratios at the end."""
from __future__ import annotations

import os
import platform
import uuid

import pytest

from shm.segment import unlink_instance

RESULTS: dict[str, dict] = {}
LOAD: dict[str, tuple[float, float, float]] = {}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def pytest_sessionstart(session):
    LOAD["start"] = os.getloadavg()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["loadavg_at_start"] = LOAD.get("start")
    machine_info["cpu_model"] = _cpu()


@pytest.fixture
def instance():
    name = f"b{uuid.uuid4().hex[:10]}"
    yield name
    unlink_instance(name)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    w = terminalreporter.write_line
    w("")
    w("SMTM-NG figures (this run)")
    end = os.getloadavg()
    w(f"  machine: {_cpu()}, {os.cpu_count()} cores; load average at start "
      f"{' '.join(f'{x:.2f}' for x in LOAD.get('start', end))}, at end {' '.join(f'{x:.2f}' for x in end)}")
    wake = [(k, v) for k, v in RESULTS.items() if k.endswith("]") and "p50_us" in v]
    if wake:
        machines = list(dict.fromkeys(k[k.rindex("[") + 1:-1] for k, _ in wake))
        names = list(dict.fromkeys(k[:k.rindex(" [")] for k, _ in wake))
        w("  one-way wake latency, writer -> reader process, p50 / p99 us (load average 1 min at the end of each)")
        w(f"  {'':<36}" + "".join(f"{m:>34}" for m in machines))
        for n in names:
            cells = []
            for m in machines:
                v = RESULTS.get(f"{n} [{m}]")
                cells.append(f"{v['p50_us']:>9.1f} / {v['p99_us']:>8.1f} (load {v.get('load1', 0):.1f})"
                             if v else f"{'-':>34}")
            w(f"  {n:<36}" + "".join(f"{c:>34}" for c in cells))
        for m in machines:
            a = RESULTS.get(f"ring, adaptive spin-then-park [{m}]")
            z, sem = RESULTS.get(f"pyzmq PUB/SUB ipc:// [{m}]"), RESULTS.get(f"ring, semaphore wake [{m}]")
            if a and z:
                w(f"  {m}: ZeroMQ / adaptive ring p50 {z['p50_us'] / a['p50_us']:.1f}x, "
                  f"p99 {z['p99_us'] / a['p99_us']:.1f}x"
                  + (f"; adaptive / semaphore wake p50 {a['p50_us'] / sem['p50_us']:.2f}x" if sem else ""))
    cp = RESULTS.get("copy"), RESULTS.get("json")
    if all(cp):
        w(f"  200 candles: ring copy {cp[0]['median_us']:.2f} us vs json.loads {cp[1]['median_us']:.1f} us "
          f"(median) -> {cp[1]['median_us'] / cp[0]['median_us']:.0f}x")
    inc, tl = RESULTS.get("incremental"), RESULTS.get("talib_recompute")
    if inc and tl:
        w(f"  all indicators per candle: incremental {inc['median_us']:.1f} us vs TA-Lib recompute over 1,000 "
          f"candles {tl['median_us']:.1f} us -> {tl['median_us'] / inc['median_us']:.1f}x")
    if "100 markets" in RESULTS:
        w(f"  incremental updates across 100 markets: {RESULTS['100 markets']['updates_per_s']:,.0f} updates/s")
    eng = [(k, v) for k, v in RESULTS.items() if "trades_per_s" in v]
    if eng:
        w(f"  {'trader latency from the trade arriving in ingest':<52} {'p50 us':>8} {'p99 us':>8} {'count':>7}"
          f"  {'trades/s':>9}")
        for k, v in eng:
            w(f"  {k:<52} {v['p50_us']:>8.0f} {v['p99_us']:>8.0f} {v['n']:>7}  {v['trades_per_s']:>9,.0f}")
    bts = [(k, v) for k, v in RESULTS.items() if "wall_s" in v]
    if bts:
        w(f"  {'backtest':<64} {'wall s':>7} {'work':>18}")
        for k, v in bts:
            w(f"  {k:<64} {v['wall_s']:>7.2f} {v['units']:>10,} {v['unit']}")
        peer = next((v for k, v in bts if "peer" in k), None)
        for what in ("command", "engine"):
            ours = next((v for k, v in bts if "ours" in k and what in k), None)
            if ours and peer:
                w(f"  ratio ours ({what}) / backtesting.py: {ours['wall_s'] / peer['wall_s']:.2f}x the wall time")
    rtt = [(k, v) for k, v in RESULTS.items() if "rtt" in v]
    if rtt:
        _percentiles(w, "exchange API round trip, loopback", "count", rtt, ".0f")
        post, floor = RESULTS.get("POST /v1/orders round trip (replay exchange)"), \
            RESULTS.get("GET /faults unsigned (HTTP floor, peer)")
        if post and floor:
            w(f"  ratio order round trip / HTTP floor: p50 {post['p50_us'] / floor['p50_us']:.1f}x, "
              f"p99 {post['p99_us'] / floor['p99_us']:.1f}x")
    for k, v in RESULTS.items():
        if "cpu_pct" in v:
            w(f"  idle consumer CPU, {k:<34} {v['cpu_pct']:>6.1f} % of a core")


def _percentiles(w, title: str, count: str, rows: list[tuple[str, dict]], fmt: str) -> None:
    """A table of p50 / p99 (µs) and sample counts."""
    w(f"  {title:<52} {'p50 us':>8} {'p99 us':>8} {count:>7}")
    for k, v in rows:
        w(f"  {k:<52} {v['p50_us']:>8{fmt}} {v['p99_us']:>8{fmt}} {v['n']:>7}")
