"""End-to-end latency under a sustained load, and the monitor under that storm.

The load generator is the replay exchange at a fixed trade rate (``exchange.rate``: the tape's trades sent
evenly at R trades/s, re-stamped so that market time runs at wall time, so 30-minute candles close as often as
they would in a real storm). Every process runs as in production — exchange, ingest, indicator, symbols, trader
(armed, paper broker) — with ``[latency] samples`` set, so each stage stamps every trade where it happens
(:mod:`procs.runtime.stamps`; CLOCK_MONOTONIC from the frame's arrival in ingest):

* ``frame -> candle in shm`` — ingest has written the trade's candles and tape record, bumped the global seqs and
  woken the consumers;
* ``frame -> indicator values`` — the indicator process has written the values of every timeframe for it;
* ``frame -> trader decision`` — the trader's engine has applied the trade (exits checked, a candle it closed
  evaluated).

Market time runs at wall time, so no 30-minute candle closes inside a 30 s window: the candle-close decisions
under load are measured by ``bench/test_trader.py`` (the replay at full speed and paced).

After the symbol manager's first ranking (the trader then trades), a window of ``SMTM_BENCH_SECONDS`` (30 s) is
measured at 1,000 and 10,000 trades/s; the samples taken inside it give p50 / p99 / p99.9 / max and the rate
actually sustained (trades ingest wrote in the window per second). At 10,000 trades/s the same is run with the
monitor drawing — in a PyQt6 window on Xvfb, and off-screen — to show its effect on the engine, and the
monitor's own frames in that window: frames per second, draw times, frames over 50 ms; it is then stopped
with SIGTERM in the middle of the storm and must exit cleanly (status 0).

The markets are the 35 safe ones of the 40 of ``../shared/data/upbit/candles`` when present (else the 12
bundled ones).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.conftest import RESULTS, SHARED_CANDLES, process_cpu_s, shared_data_dir, shared_markets
from procs.market.tape import load_market_all
from procs.market.universe import safety_flags
from procs.runtime.roster import STATUS_ROWS
from procs.trading.latency import LatencyProbe
from shm.segment import unlink_instance
from shm.status import State, StatusTable
from tests.helpers import ALL_MARKETS, ROOT, Env, attach, get_json, start_xvfb, wait_for

SECONDS = float(os.environ.get("SMTM_BENCH_SECONDS", "30"))
STAGES = ("frame -> candle in shm", "frame -> indicator values", "frame -> trader decision")
TRADER = "\n[trader]\narm_on_start = true\n[symbols]\ntop_n = 40\n[latency]\nsamples = 2000000\n"
#: in this order: the monitor runs between two runs without it, so the spread of the machine shows
RUNS = {"1,000 trades/s": (1000.0, None), "10,000 trades/s": (10000.0, None),
        "10,000 trades/s, monitor window": (10000.0, "window"),
        "10,000 trades/s, monitor off-screen": (10000.0, "offscreen"),
        "10,000 trades/s, again without the monitor": (10000.0, None)}
#: the gateway at 10,000 trades/s without a client, then with 50 on /ws/market (issue #12: the engine's latency
#: with observers connected against without)
GATEWAY_RUNS = {"10,000 trades/s, gateway, no client": 0, "10,000 trades/s, gateway, 50 WebSocket clients": 50}


def _data_dir(tmp: Path) -> tuple[str, list[str], str]:
    """The replay's data folder, markets and first day: those of the 40 shared markets (linked beside the bundled
    REST file) that pass the symbol manager's safety filter (35; every trade sent is then subscribed), from the
    first day all of them trade, or the bundled 12."""
    if not (SHARED_CANDLES / "minute30").is_dir():
        return str(ROOT / "data" / "upbit"), list(ALL_MARKETS), ""
    d = shared_data_dir(tmp)
    safe = {c for c, f in safety_flags(load_market_all(d)).items() if f == 0}   # the symbol manager's filter
    return str(d), [m for m in shared_markets() if m in safe], "2024-12-17"


def _summary(us: np.ndarray) -> dict:
    return {**LatencyProbe.summary(us), "samples_us": us} if len(us) else {"n": 0}


def _window(npz: Path, name: str, t0: int, t1: int) -> np.ndarray:
    with np.load(npz) as z:
        if name not in z:
            return np.empty(0)
        us, at = z[name], z[name + "@"]
    return us[(at >= t0) & (at < t1)]


def _run(tmp: Path, rate: float, monitor: str | None, clients: int | None = None) -> dict:
    """One measured window; ``clients``: run the gateway too, with that many WebSocket clients on ``/ws/market``
    (bench/ws_clients.py, its own process) during the window."""
    inst = f"b{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
    data, markets, first_day = _data_dir(tmp)
    env.write_overlay(markets=markets, rows=64, speed=1.0, shm="trades_capacity = 16384",
                      exchange=f'data_dir = "{data}"\nrate = {rate}\nstart = "{first_day}"', tail=TRADER)
    xvfb = None
    mon = None
    try:
        for p in ("exchange", "indicator", "symbols", "trader"):
            env.start(p)
        control = f"{env.base}/replay/control"
        wait_for(lambda: get_json(f"{env.base}/replay/status"), 30, "the replay exchange")
        requests.post(control, json={"pause": True}, timeout=5).raise_for_status()
        if monitor is not None:
            if monitor == "window":
                xvfb, display = start_xvfb()
                env.env.update(DISPLAY=display, QT_QPA_PLATFORM="xcb")
            else:
                env.env["SMTM_MONITOR_OFFSCREEN"] = "1"
            mon = env.start("monitor")
        gateway = env.start("gateway") if clients is not None else None
        env.start("ingest")
        st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
        wait_for(lambda: st.read("trader")["state"] == State.RUNNING, 60, "the trader to attach")
        if monitor is not None:
            wait_for(lambda: int(st.read("monitor")["msgs_out"]) > 0, 60, "the monitor's first frame")
        requests.post(control, json={"resume": True}, timeout=5).raise_for_status()
        from procs.trading.client import TraderClient
        with TraderClient(env.run_dir / "trader.sock") as c:   # the first ranking: the trader trades from here
            wait_for(lambda: c.request("ENGINE.STATUS")["payload"]["tradable"] is not None, 60, "the first ranking")
        time.sleep(1.0)
        observers = None
        if clients:
            ep = json.loads((env.run_dir / "gateway.json").read_text())
            observers = subprocess.Popen([sys.executable, "-m", "bench.ws_clients",
                                          f"ws://{ep['host']}:{ep['port']}/ws/market", str(clients), str(SECONDS),
                                          ",".join(markets), str(tmp / "clients.json")], cwd=ROOT)
            time.sleep(1.0)     # connected and subscribed before the window
        t0 = time.monotonic_ns()
        load0 = os.getloadavg()[0]
        gw_cpu0 = process_cpu_s(gateway.pid) if gateway is not None else 0.0
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(SECONDS)
        t1 = time.monotonic_ns()
        load1 = os.getloadavg()[0]
        out = {"load1": (load0, load1)}
        if gateway is not None:
            out["gateway_cpu_pct"] = 100.0 * (process_cpu_s(gateway.pid) - gw_cpu0) / SECONDS
        if observers is not None:
            assert observers.wait(timeout=60) == 0
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)    # the observers' process: waited for just now
            out["observers_cpu_pct"] = 100.0 * (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime
                                                - kids0.ru_stime) / SECONDS
            per = json.loads((tmp / "clients.json").read_text())
            rates = [c["per_s"] for c in per]
            out["clients"] = {"n": clients, "held": sum(c["closed"] is None for c in per),
                              "gateway_cpu_pct": out["gateway_cpu_pct"], "observers_cpu_pct": out["observers_cpu_pct"],
                              "per_s": [min(rates), float(np.mean(rates)), max(rates)],
                              "messages": sum(c["messages"] for c in per)}
        if mon is not None:        # SIGTERM in the middle of the storm: a clean exit, its frames saved
            os.killpg(mon.pid, signal.SIGTERM)
            out["monitor_exit"] = mon.wait(timeout=30)
        requests.post(control, json={"pause": True}, timeout=5).raise_for_status()
        sent = get_json(f"{env.base}/replay/status")["frames_sent"]
        wait_for(lambda: int(st.read("ingest")["msgs_in"]) >= sent, 60, "ingest to read every frame")
        trades = int(st.read("ingest")["msgs_out"])
        with TraderClient(env.run_dir / "trader.sock") as c:
            wait_for(lambda: c.request("ENGINE.STATUS")["payload"]["trades_seen"] >= trades, 60, "the trader")
            out["health"] = c.request("ENGINE.STATUS")["payload"]["health"]
        env.stop_all()
        lat = env.run_dir / "latency"
        files = {p: lat / f"{p}.npz" for p in ("ingest", "indicator", "trader", "monitor")}
        owner = {STAGES[0]: "ingest", STAGES[1]: "indicator", STAGES[2]: "trader"}
        out["stages"] = {s: _summary(_window(files[owner[s]], s, t0, t1)) for s in STAGES}
        out["rate_sustained"] = out["stages"][STAGES[0]]["n"] / ((t1 - t0) / 1e9)
        out["markets"] = len(markets)
        if mon is not None:
            draw = _window(files["monitor"], "monitor draw", t0, t1) / 1000.0
            gaps = _window(files["monitor"], "monitor frame interval", t0, t1) / 1000.0
            out["frames"] = {"n": len(draw), "fps": len(draw) / ((t1 - t0) / 1e9),
                             "draw_ms": np.percentile(draw, [50, 99]).tolist() + [float(draw.max())],
                             "interval_ms": np.percentile(gaps, [50, 99]).tolist() + [float(gaps.max())],
                             "over_50ms": int((gaps > 50.0).sum())}
        return out
    finally:
        env.stop_all()
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)
        unlink_instance(inst)


@pytest.mark.parametrize("run", list(RUNS))
def test_end_to_end_latency_under_load(benchmark, tmp_path, run):
    rate, monitor = RUNS[run]
    if monitor == "window" and shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (make bench installs it as root)")
    out = benchmark.pedantic(_run, args=(tmp_path, rate, monitor), rounds=1, iterations=1)
    assert out["health"]["trades_missed"] == 0
    RESULTS[f"end to end, {run}"] = {
        "group": "e2e", "label": run, "rate_target": rate, "rate_sustained": out["rate_sustained"],
        "duration_s": SECONDS, "monitor": monitor or "off", "markets": out["markets"], "stages": out["stages"]}
    benchmark.extra_info.update({"rate_sustained": out["rate_sustained"], **{
        f"{s} p99_us": v.get("p99_us") for s, v in out["stages"].items()}})
    if monitor is not None:
        f = out["frames"]
        RESULTS[f"monitor, {monitor}, {rate:,.0f} trades/s"] = {
            "group": "monitor", "label": f"monitor {monitor} at {rate:,.0f} trades/s", "mode": monitor,
            "rate": rate, "fps": f["fps"], "frames": f["n"],
            "frame_ms": dict(zip(("p50", "p99", "max"), f["draw_ms"])),
            "interval_ms": dict(zip(("p50", "p99", "max"), f["interval_ms"])), "over_50ms": f["over_50ms"],
            "sigterm_exit": out["monitor_exit"]}
        assert out["monitor_exit"] == 0, f"the monitor exited with {out['monitor_exit']} on SIGTERM"


@pytest.mark.parametrize("run", list(GATEWAY_RUNS))
def test_engine_latency_with_the_gateways_clients(benchmark, tmp_path, run):
    n = GATEWAY_RUNS[run]
    out = benchmark.pedantic(_run, args=(tmp_path, 10000.0, None, n), rounds=1, iterations=1)
    assert out["health"]["trades_missed"] == 0
    RESULTS[f"end to end, {run}"] = {
        "group": "e2e", "label": run, "rate_target": 10000.0, "rate_sustained": out["rate_sustained"],
        "duration_s": SECONDS, "monitor": "off", "markets": out["markets"], "stages": out["stages"]}
    if n:
        c = out["clients"]
        RESULTS[f"gateway, {n} WebSocket clients at 10,000 trades/s"] = {
            "group": "other", "label": f"gateway: {n} /ws/market clients at 10,000 trades/s",
            "clients": c["n"], "clients_held": c["held"], "messages_per_s_per_client_min": c["per_s"][0],
            "messages_per_s_per_client_mean": c["per_s"][1], "messages_per_s_per_client_max": c["per_s"][2],
            "messages": c["messages"], "gateway_cpu_pct": c["gateway_cpu_pct"],
            "observers_cpu_pct": c["observers_cpu_pct"]}
        assert c["held"] == n, c
    else:
        RESULTS[f"end to end, {run}"]["gateway_cpu_pct"] = out["gateway_cpu_pct"]
    benchmark.extra_info.update({"rate_sustained": out["rate_sustained"], **{
        f"{s} p99_us": v.get("p99_us") for s, v in out["stages"].items()}})
