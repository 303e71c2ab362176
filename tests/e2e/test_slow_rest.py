"""Ingest fetches REST outside its write lock (regression: a repair fetched up to 50 REST pages
holding the lock the WebSocket handler needs, so a slow REST stalled the live stream): while a
market added to the universe waits 3 s for its REST history, the other markets' trades keep
reaching the rings and the heartbeat keeps beating; then the new market's history lands and every
closed candle equals the source."""
import subprocess
import sys
import time

import requests

from procs.market.tape import load_dataset
from procs.runtime.roster import STATUS_ROWS
from shm.status import StatusTable
from shm.tables import CANDLES
from tests.helpers import DATA, ROOT, attach, closed_candle_mismatch, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SHIB"]


def universe(env, codes):
    out = subprocess.run([sys.executable, "-m", "procs.cli", "universe", "set", ",".join(codes)], cwd=ROOT,
                         env=env.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_trades_flow_while_a_repair_waits_on_slow_rest(env):
    env.write_overlay(markets=MARKETS, capacity=8192, speed=20_000.0)
    universe(env, MARKETS[:3])
    env.start("exchange")
    base = env.base
    env.start("ingest")
    st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    ring = wait_for(lambda: attach(CANDLES.open, env.instance, "30m", 32, 8192), 30, "candles.30m")
    wait_for(lambda: int(st.read("ingest")["msgs_out"]) > 200, 30, "trades flowing")
    requests.post(base + "/faults", json={"type": "rest_slow", "count": 1, "seconds": 3.0}, timeout=5)
    universe(env, MARKETS)                            # KRW-SHIB's history comes from REST: slowly
    wait_for(lambda: requests.get(base + "/faults", timeout=5).json()["rest_slow_left"] == 0, 30,
             "the new market's REST request (now held 3 s by the exchange)")
    r0, t0 = st.read("ingest"), time.monotonic()
    time.sleep(2.0)                                   # REST is still answering
    r1 = st.read("ingest")
    flowed = int(r1["msgs_out"]) - int(r0["msgs_out"])
    print(f"\ntrades applied during 2 s of a 3 s REST repair: {flowed}")
    assert flowed > 100, "the stream stalled behind the repair"
    assert int(r1["heartbeat_ns"]) > time.monotonic_ns() - 1_000_000_000, "the heartbeat stalled"
    assert time.monotonic() - t0 < 3.0
    src = load_dataset(DATA, MARKETS)

    def repaired():
        return closed_candle_mismatch(ring, src, MARKETS, min_closed=2) is None
    wait_for(repaired, 30, "every closed candle, the new market's too, to equal the source")
