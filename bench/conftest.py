"""Collects the figures the benchmarks measure, prints p50/p99 and ratios at the end and writes the report
(``--bench-report DIR``: ``report.md`` with its PNGs, ``results.json`` and ``machine.json``; see bench/report.py).

Around each test's call it records the load observed during the measurement and puts it, as ``"load"``, in every
entry of RESULTS the test created or updated: ``load1_before`` / ``load1_after`` (1-minute load average),
``cpu_busy_pct`` (the whole machine's CPU busy during the call, 100 % = every core, from /proc/stat), ``steal_pct``
(the share of that time the hypervisor gave this machine's virtual CPUs to others while they had work) and
``test_s`` (the call's wall seconds)."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
import traceback
import uuid
from pathlib import Path

import numpy as np
import pytest

from bench import report, stalls
from shm.segment import unlink_instance
from tests.helpers import ROOT

RESULTS: dict[str, dict] = {}
#: the 40 markets × 3 months of 30-minute candles beside the repository (not bundled: benchmarks skip without them)
SHARED_CANDLES = ROOT.parent / "shared" / "data" / "upbit" / "candles"


def shared_markets() -> list[str]:
    """The market codes of :data:`SHARED_CANDLES` (``minute30/KRW-*.csv*``), sorted."""
    return sorted({f.name.split("_")[0] for f in (SHARED_CANDLES / "minute30").glob("KRW-*.csv*")})


def shared_data_dir(tmp: Path) -> Path:
    """A replay data directory under ``tmp``: the shared 30-minute candles and the bundled REST files, linked."""
    d = tmp / "data"
    d.mkdir()
    (d / "minute30").symlink_to(SHARED_CANDLES / "minute30")
    (d / "rest").symlink_to(ROOT / "data" / "upbit" / "rest")
    return d
LOAD: dict = {}   # the load average at the start, and the git commit
#: where the report went (or why it did not), for the terminal summary
REPORT: dict[str, str] = {}
#: the entries whose "load" this conftest set, by key: a later test that adds figures to one merges its load in
LOADED: dict[str, dict] = {}
ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def pytest_addoption(parser):
    parser.addoption("--bench-report", metavar="DIR", default="run/bench/report",
                     help="where the benchmark report goes: report.md, its PNGs, results.json, machine.json "
                          "(default: run/bench/report)")


#: seconds of the stall probe (bench/stalls.py) at the start and the end of a session; SMTM_BENCH_STALL_S=0 skips it
STALL_PROBE_S = float(os.environ.get("SMTM_BENCH_STALL_S", "2"))
STALLS: dict[str, dict] = {}


def pytest_sessionstart(session):
    LOAD["start"] = os.getloadavg()
    LOAD["commit"] = _git_commit()    # the code measured: before the run writes its report into the tree
    STALLS["start"] = stalls.measure(STALL_PROBE_S)   # before anything runs: it spins every core


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["loadavg_at_start"] = LOAD.get("start")
    machine_info["cpu_model"] = _cpu()


@pytest.fixture
def instance():
    name = f"b{uuid.uuid4().hex[:10]}"
    yield name
    unlink_instance(name)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load during each measurement -------------------------------------------------------------------------------
def _cpu_times() -> tuple[int, int, int] | None:
    """(idle + iowait, total, steal) jiffies of all cores since boot, from /proc/stat; None where there is none.
    Steal is the time the hypervisor ran something else while a virtual CPU of this machine had work (as the
    guest kernel counts it)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest and guest_nice are counted in user and nice already)
    fields += [0] * (8 - len(fields))    # an old kernel without steal (or irq) columns
    return fields[3] + fields[4], sum(fields[:8]), fields[7]


def _snapshot() -> dict[str, tuple[dict, list]]:
    return {k: (v, list(v.values()) if isinstance(v, dict) else []) for k, v in RESULTS.items()}


def _touched(before: dict[str, tuple[dict, list]]) -> list[str]:
    """The keys of RESULTS created, replaced or changed in place since ``before``."""
    out = []
    for k, v in RESULTS.items():
        old = before.get(k)
        if old is None or old[0] is not v or not isinstance(v, dict) or len(old[1]) != len(v) \
                or any(a is not b for a, b in zip(old[1], v.values())):
            out.append(k)
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    before = _snapshot()
    load0, cpu0, t0 = os.getloadavg()[0], _cpu_times(), time.perf_counter()
    try:
        return (yield)
    finally:
        wall = time.perf_counter() - t0
        load1, cpu1 = os.getloadavg()[0], _cpu_times()
        busy = steal = None
        if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
            busy = round(100.0 * (1.0 - (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1])), 1)
            steal = round(100.0 * (cpu1[2] - cpu0[2]) / (cpu1[1] - cpu0[1]), 1)
        load = {"load1_before": load0, "load1_after": load1, "cpu_busy_pct": busy, "steal_pct": steal,
                "test_s": round(wall, 3)}
        for k in _touched(before):
            e = RESULTS[k]
            if isinstance(e, dict):
                e["load"] = _merge_load(e["load"], load) if LOADED.get(k) is e and "load" in e else dict(load)
                LOADED[k] = e


def _merge_load(old: dict, new: dict) -> dict:
    """The load over two tests that both measured figures of one entry: the first's load average before, the
    last's after, the CPU busy and steal shares weighted by their wall times, the wall times summed."""
    ta, tb = old.get("test_s") or 0.0, new.get("test_s") or 0.0

    def weighted(key):
        a, b = old.get(key), new.get(key)
        return a if b is None else b if a is None else round((a * ta + b * tb) / (ta + tb), 1) if ta + tb else b
    return {"load1_before": old.get("load1_before"), "load1_after": new.get("load1_after"),
            "cpu_busy_pct": weighted("cpu_busy_pct"), "steal_pct": weighted("steal_pct"), "test_s": round(ta + tb, 3)}


# -- the report -----------------------------------------------------------------------------------------------------
def plain(x, key: str | None = None):
    """``x`` as JSON can hold it: numpy arrays as lists (a ``samples_us`` array thinned to at most 2,000 quantile
    points), numpy scalars as numbers, NaN and infinities as null."""
    if isinstance(x, dict):
        return {str(k): plain(v, str(k)) for k, v in x.items()}
    if key == "samples_us" and isinstance(x, list | tuple | np.ndarray):
        x = np.round(report.thin(x), 2)     # 0.01 µs is finer than any clock here, and keeps the file small
    if isinstance(x, np.ndarray):
        return [plain(v) for v in x.tolist()]
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + (" (with uncommitted changes)" if dirty else "")) if head else "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def machine() -> dict:
    """The machine and software the figures were measured on."""
    libs = {}
    for dist in report.LIBRARIES:
        try:
            libs["redis-py" if dist == "redis" else dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            libs["redis-py" if dist == "redis" else dist] = "not installed"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu": _cpu(), "cores": os.cpu_count(), "cores_usable": usable, "memory": _memory(),
            "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": f"{platform.python_implementation()} {platform.python_version()}", "libraries": libs,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "git_commit": LOAD.get("commit") or _git_commit(),
            "load_start": list(LOAD.get("start") or os.getloadavg()), "load_end": list(os.getloadavg()),
            "stalls_start": STALLS.get("start") or {}, "stalls_end": STALLS.get("end") or {}}


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    out = Path(session.config.getoption("--bench-report"))
    if not out.is_absolute():
        out = Path(session.config.invocation_params.dir) / out
    try:
        out.mkdir(parents=True, exist_ok=True)
        # one line per entry: its samples would otherwise take a line each (tens of thousands for a run)
        entries = plain(RESULTS)
        (out / "results.json").write_text(
            "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) + "\n}\n")
        STALLS["end"] = stalls.measure(STALL_PROBE_S)    # after the last measurement (never raises)
        m = machine()
        (out / "machine.json").write_text(json.dumps(m, indent=1) + "\n")
        REPORT["path"] = str(report.write(RESULTS, m, out))
    except Exception:  # the figures are printed anyway; the failure is shown and fails the run
        REPORT["error"] = traceback.format_exc()
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    w = terminalreporter.write_line
    w("")
    w("SMTM-NG figures (this run)")
    end = os.getloadavg()
    w(f"  machine: {_cpu()}, {os.cpu_count()} cores; load average at start "
      f"{' '.join(f'{x:.2f}' for x in LOAD.get('start', end))}, at end {' '.join(f'{x:.2f}' for x in end)}")
    for when in ("start", "end"):
        if STALLS.get(when):
            w(f"  stalls at {when} (a spin on each core): {stalls.describe(STALLS[when])}")
    groups = {k: report.group_of(k, v) for k, v in RESULTS.items()}
    wake = [(k, v) for k, v in RESULTS.items() if groups[k] == "wake" and k.endswith("]") and "p50_us" in v]
    if wake:
        machines = list(dict.fromkeys(k[k.rindex("[") + 1:-1] for k, _ in wake))
        names = list(dict.fromkeys(k[:k.rindex(" [")] for k, _ in wake))
        w("  one-way wake latency, writer -> reader process, p50 / p99 us (load average 1 min at the end of each)")
        w(f"  {'':<36}" + "".join(f"{m:>34}" for m in machines))
        for n in names:
            cells = []
            for m in machines:
                v = RESULTS.get(f"{n} [{m}]")
                load1 = v.get("load1", (v.get("load") or {}).get("load1_after", 0)) if v else 0
                cells.append(f"{v['p50_us']:>9.1f} / {v['p99_us']:>8.1f} (load {load1:.1f})" if v else f"{'-':>34}")
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
    for peer in ("orjson", "pickle"):
        v = RESULTS.get(peer)
        if v and cp[0]:
            w(f"  200 candles: ring copy {cp[0]['median_us']:.2f} us vs {v.get('label', peer)} {v['median_us']:.1f} us "
              f"(median) -> {v['median_us'] / cp[0]['median_us']:.0f}x")
    inc, tl = RESULTS.get("incremental"), RESULTS.get("talib_recompute")
    if inc and tl:
        w(f"  all indicators per candle: incremental {inc['median_us']:.1f} us vs TA-Lib recompute over 1,000 "
          f"candles {tl['median_us']:.1f} us -> {tl['median_us'] / inc['median_us']:.1f}x")
    if "100 markets" in RESULTS:
        w(f"  incremental updates across 100 markets: {RESULTS['100 markets']['updates_per_s']:,.0f} updates/s")
    eng = [(k, v) for k, v in RESULTS.items() if groups[k] == "trader" and "p50_us" in v]
    if eng:
        w(f"  {'trader latency from the trade arriving in ingest':<52} {'p50 us':>8} {'p99 us':>8} {'count':>7}"
          f"  {'trades/s':>9}")
        for k, v in eng:
            w(f"  {k:<52} {v['p50_us']:>8.0f} {v['p99_us']:>8.0f} {v['n']:>7}  {v['trades_per_s']:>9,.0f}")
    bts = [(k, v) for k, v in RESULTS.items() if groups[k] == "backtest" and "wall_s" in v]
    if bts:
        w(f"  {'backtest':<64} {'wall s':>7} {'work':>18}")
        for k, v in bts:
            w(f"  {k:<64} {v['wall_s']:>7.2f} {v['units']:>10,} {v['unit']}")
        peer = next((v for k, v in bts if "peer" in k), None)
        for what in ("command", "engine"):
            ours = next((v for k, v in bts if "ours" in k and what in k), None)
            if ours and peer:
                w(f"  ratio ours ({what}) / backtesting.py: {ours['wall_s'] / peer['wall_s']:.2f}x the wall time")
    rtt = [(k, v) for k, v in RESULTS.items() if groups[k] == "orders" and "p50_us" in v]
    if rtt:
        _percentiles(w, "exchange API round trip, loopback", "count", rtt, ".0f")
        post, floor = RESULTS.get("POST /v1/orders round trip (replay exchange)"), \
            RESULTS.get("GET /faults unsigned (HTTP floor, peer)")
        if post and floor:
            w(f"  ratio order round trip / HTTP floor: p50 {post['p50_us'] / floor['p50_us']:.1f}x, "
              f"p99 {post['p99_us'] / floor['p99_us']:.1f}x")
    for k, v in RESULTS.items():
        if groups[k] == "idle_cpu" and "cpu_pct" in v:
            w(f"  idle consumer CPU, {k:<34} {v['cpu_pct']:>6.1f} % of a core")
    _new_groups(w, groups)
    if "path" in REPORT:
        w(f"  report: {REPORT['path']}")
    if "error" in REPORT:
        w("  the report could not be written:")
        for line in REPORT["error"].rstrip().splitlines():
            w(f"    {line}")
    _scale_rows(w)


def _scale_rows(w) -> None:
    """bench/test_scale.py: one line per market count (a figure not measured in this run: -)."""
    rows = sorted((v for v in RESULTS.values() if v.get("group") == "scale"), key=lambda v: v["markets"])
    if not rows:
        return
    cols = (("ingest_trades_per_s", "ingest trades/s", ",.0f", 1), ("indicator_updates_per_s", "ind. updates/s",
            ",.0f", 1), ("pipeline_trades_per_s", "pipeline trades/s", ",.0f", 1), ("shm_bytes", "shm MiB", ",.1f",
            2**20))
    w(f"  {'scale (one core, in process)':<30}" + "".join(f"{h:>19}" for _, h, _, _ in cols))
    for v in rows:
        cells = [format(v[k] / d, f) if k in v else "-" for k, _, f, d in cols]
        w(f"  {str(v['markets']) + ' markets':<30}" + "".join(f"{c:>19}" for c in cells))


def _percentiles(w, title: str, count: str, rows: list[tuple[str, dict]], fmt: str) -> None:
    """A table of p50 / p99 (µs) and sample counts."""
    w(f"  {title:<52} {'p50 us':>8} {'p99 us':>8} {count:>7}")
    for k, v in rows:
        w(f"  {k:<52} {v['p50_us']:>8{fmt}} {v['p99_us']:>8{fmt}} {v['n']:>7}")


def _new_groups(w, groups: dict[str, str]) -> None:
    """One line per entry of the groups only the report drew before (end-to-end, throughput, monitor)."""
    for k, v in RESULTS.items():
        g = groups[k]
        if g == "e2e":
            stages = "; ".join(f"{s} {report.dur(st.get('p50_us'))} / {report.dur(st.get('p99_us'))}"
                               for s, st in (v.get("stages") or {}).items())
            w(f"  end to end, {report.label_of(k, v)}: {report.num(v.get('rate_sustained'))} trades/s sustained, "
              f"monitor {report._monitor_state(v)}; p50 / p99 {stages}")
        elif g == "throughput":
            w(f"  throughput {report.label_of(k, v)}: {report.num(v.get('trades_per_s'))} trades/s "
              f"({report.num(v.get('trades'))} trades in {report.num(v.get('wall_s'))} s)")
        elif g == "monitor":
            f = v.get("frame_ms") or {}
            w(f"  monitor {report.label_of(k, v)} ({v.get('mode', '?')}): {report.num(v.get('fps'))} fps, frame "
              f"p50 / p99 {report.num(f.get('p50'))} / {report.num(f.get('p99'))} ms")
