"""Under supervisord: kill -9 of the monitor is repaired without the engine noticing, and
`supervisorctl stop ingest` stops only ingest. Uses the repository's own supervisord.conf,
with its run directory and interpreter pointed at this test's."""
import os
import signal
import subprocess
import sys
import time

import pytest

from procs.runtime.roster import STATUS_ROWS
from shm.status import State, StatusTable
from shm.tables import CANDLES
from tests.helpers import attach, start_supervisord, stop_supervisord, wait_for


@pytest.fixture
def supervised(env):
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"], speed=3600.0)
    sup, conf = start_supervisord(env)
    try:
        wait_for(lambda: sup.running() and all(p["statename"] == "RUNNING" for p in sup.processes()), 60,
                 "every program RUNNING")
        yield env, sup, conf
    finally:
        stop_supervisord(sup)


def test_monitor_crash_is_invisible_to_the_engine(supervised):
    env, sup, conf = supervised
    st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    wait_for(lambda: int(st.read("monitor")["msgs_out"]) > 0, 60, "the monitor's first frame")
    ring = wait_for(lambda: attach(CANDLES.open, env.instance, "30m", 32, 2048), 30, "candles.30m")
    wait_for(lambda: ring.counts().sum() > 0, 60, "candles")
    pids = {p["name"]: p["pid"] for p in sup.processes()}
    count0 = int(ring.counts().sum())
    t0 = time.monotonic()
    os.kill(pids["monitor"], signal.SIGKILL)
    r = wait_for(lambda: (lambda r: r if int(r["pid"]) not in (0, pids["monitor"]) and int(r["msgs_out"]) > 0
                          else None)(st.read("monitor")), 30, "the restarted monitor's first frame")
    restart_s = time.monotonic() - t0
    print(f"monitor drawing again {restart_s:.2f} s after kill -9")
    now = {p["name"]: p["pid"] for p in sup.processes()}
    assert now["monitor"] == int(r["pid"]) != pids["monitor"]
    for name in ("exchange", "ingest", "indicator", "symbols", "trader"):
        assert now[name] == pids[name], f"{name} was restarted"
    wait_for(lambda: int(ring.counts().sum()) > count0, 30, "ring counts to keep growing")
    assert restart_s < 10


def test_stop_ingest_stops_only_ingest(supervised):
    env, sup, conf = supervised
    st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    wait_for(lambda: st.read("ingest")["state"] == State.RUNNING, 60, "ingest RUNNING")
    ctl = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
    ctl = [ctl, "-c", str(conf), "-s", f"unix://{sup.socket}"]
    out = subprocess.run([*ctl, "stop", "ingest"], capture_output=True, text=True, timeout=30)
    assert "ingest: stopped" in out.stdout
    states = {p["name"]: p["statename"] for p in sup.processes()}
    assert states == {"exchange": "RUNNING", "ingest": "STOPPED", "indicator": "RUNNING", "symbols": "RUNNING",
                      "trader": "RUNNING", "gateway": "RUNNING", "monitor": "RUNNING"}
    assert st.read("ingest")["state"] == State.STOPPED
    out = subprocess.run([*ctl, "start", "ingest"], capture_output=True, text=True, timeout=30)
    assert "ingest: started" in out.stdout
