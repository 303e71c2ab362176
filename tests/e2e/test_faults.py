"""The fault matrix: one replay of real data with every exchange fault injected in turn.

For each fault: ingest stays up (same pid), nothing malformed reaches a ring, the counters
say what was dropped, and after recovery every closed 30 m candle equals the source. At the
end (a 30 s outage included) every ring of every timeframe equals the source, and the
outage's candles are flagged BACKFILLED. Recovery times are printed (run with -s) and
written to ``fault_recovery.json`` in the test's directory.
"""
import json
import time

import numpy as np
import pandas as pd
import pytest
import requests

from procs.market.tape import load_dataset
from procs.runtime.roster import STATUS_ROWS
from shm.status import State, StatusTable
from shm.tables import BACKFILLED, CANDLES
from tests.helpers import ROOT, attach, closed_candle_mismatch, get_json, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SHIB"]
SRC = load_dataset(ROOT / "data" / "upbit", MARKETS)
CAP = 8192


class Rig:
    def __init__(self, env):
        self.env = env
        self.base = f"http://127.0.0.1:{env.port}"
        self.status = None
        self.rings = {}
        self.recovery: dict[str, float] = {}

    def get(self, path):
        return requests.get(self.base + path, timeout=5).json()

    def post(self, path, body):
        r = requests.post(self.base + path, json=body, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def ingest(self):
        return self.status.read("ingest")

    def detail(self, key):
        d = bytes(self.ingest()["detail"]).decode()
        return int(d.split(f"{key}=")[1].split()[0])

    def flowing(self, since_out: int) -> bool:
        r = self.ingest()
        return r["state"] == State.RUNNING and int(r["msgs_out"]) > since_out

    def closed_candles_match(self) -> bool:
        """Every candle before each market's newest (open) one equals the source."""
        self.mismatch = closed_candle_mismatch(self.rings["30m"], SRC, MARKETS, value_rel=1e-12)
        return self.mismatch is None

    def timed(self, name, pred, timeout=60):
        t0 = time.monotonic()
        self.mismatch = None
        try:
            wait_for(pred, timeout, f"recovery from {name}", interval=0.02)
        except AssertionError as e:
            raise AssertionError(f"{e}; last candle mismatch: {self.mismatch}") from None
        self.recovery[name] = time.monotonic() - t0


@pytest.fixture
def rig(env):
    env.write_overlay(markets=MARKETS, capacity=CAP, speed=20_000.0, extra="""
stall_timeout_s = 1.5
keepalive_s = 0.5
""")
    env.start("indicator")
    env.start("exchange")
    r = Rig(env)
    wait_for(lambda: get_json(r.base + "/replay/status"), 30, "the exchange")
    ing = env.start("ingest")
    r.status = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    r.rings = {tf: wait_for(lambda tf=tf: attach(CANDLES.open, env.instance, tf, 32, CAP), 30, f"candles.{tf}")
               for tf in ("30m", "4h", "1d")}
    wait_for(lambda: r.flowing(100), 30, "trades flowing")
    r.pid = ing.pid
    return r


def test_fault_matrix(rig, env):
    r = rig
    dropped0 = int(r.ingest()["dropped"])

    # malformed frames: counted and dropped, never written
    r.post("/faults", {"type": "malformed", "count": 40})
    r.timed("malformed (40 bad frames)", lambda: int(r.ingest()["dropped"]) >= dropped0 + 40)
    assert {n for n in r.rings["30m"].names() if n} == set(MARKETS)
    assert r.closed_candles_match()

    # duplicated trades: counted once
    dup0 = r.detail("dup")
    r.post("/faults", {"type": "duplicate", "count": 50})
    r.timed("duplicate (50 trades twice)", lambda: r.detail("dup") >= dup0 + 50)
    assert r.closed_candles_match()

    # reordered trades: open/close by trade time; late ones repaired from REST
    rep0 = r.detail("repairs")
    r.post("/faults", {"type": "reorder", "count": 300})
    r.timed("reorder (300 trades)", lambda: r.get("/faults")["reorder_left"] == 0
            and r.closed_candles_match())
    assert r.detail("repairs") >= rep0  # late trades across a candle boundary were re-read from REST

    # The reconnecting faults: recovered once every market was repaired from REST after the
    # fault (ingest's own repair counter) and trades flow again on the new connection.
    n = len(MARKETS)

    def reconnected(rep0, rc0):
        return lambda: (int(r.ingest()["reconnects"]) > rc0 and r.detail("repairs") >= rep0 + n
                        and r.ingest()["state"] == State.RUNNING and r.closed_candles_match())

    def marks():
        return r.detail("repairs"), int(r.ingest()["reconnects"])

    # stall: open but silent; ingest notices within stall_timeout_s, reconnects and backfills
    m = marks()
    r.post("/faults", {"type": "stall", "seconds": 4})
    r.timed("stall (4 s silent)", reconnected(*m))

    # drop: abrupt close, immediate reconnect
    m = marks()
    r.post("/faults", {"type": "drop"})
    r.timed("drop (reconnect at once)", reconnected(*m))

    # REST 429 burst, then a drop forces a repair through it
    m = marks()
    r.post("/faults", {"type": "rest_429", "count": 6})
    r.post("/faults", {"type": "drop"})
    r.timed("rest_429 x6 during a repair", reconnected(*m))
    assert r.get("/replay/status")["rest_status_counts"].get("429", 0) >= 6

    # REST 418 for 3 s: the repair waits for the block to end, then succeeds
    m = marks()
    errors0 = int(r.ingest()["errors"])
    r.post("/faults", {"type": "rest_418", "seconds": 3})
    r.post("/faults", {"type": "drop"})
    t418 = time.monotonic()
    r.timed("rest_418 (3 s block) during a repair", reconnected(*m), timeout=90)
    assert time.monotonic() - t418 >= 2.5
    assert int(r.ingest()["errors"]) > errors0  # the blocked repair was counted

    # slow REST responses
    m = marks()
    r.post("/faults", {"type": "rest_slow", "count": 4, "seconds": 0.5})
    r.post("/faults", {"type": "drop"})
    r.timed("rest_slow (4 x 0.5 s) during a repair", reconnected(*m))

    # a 30 s outage in the middle of the replay (replay slowed to 1 h per second meanwhile)
    r.post("/replay/control", {"speed": 3600})
    btc = r.rings["30m"].row_of("KRW-BTC")
    before = r.rings["30m"].count(btc)
    m = marks()
    r.post("/faults", {"type": "drop", "seconds": 30})
    time.sleep(2)
    assert r.ingest()["state"] == State.DISCONNECTED
    time.sleep(28)
    outage = reconnected(*m)
    r.timed("30 s outage: reconnect + backfill", lambda: outage() and r.rings["30m"].count(btc) > before + 20,
            timeout=60)
    recs, cnt = r.rings["30m"].read_last(r.rings["30m"].row_of("KRW-BTC"), CAP)
    gap = recs[before - (cnt - len(recs)) - 1:]
    assert (gap["flags"] & BACKFILLED).sum() >= 20, "the outage's candles were not backfilled"

    # finish the replay fast, then every ring equals the source
    r.post("/replay/control", {"speed": 0})
    wait_for(lambda: r.get("/replay/status")["finished"], 240, "the replay to finish", interval=0.5)
    def last_candles_complete():
        ring = r.rings["30m"]
        for m in MARKETS:
            last = ring.read_last(ring.row_of(m), 1)[0]
            if not len(last) or last["t"][0] != SRC[m]["t"][-1] or last["v"][0] != SRC[m]["v"][-1]:
                return False
        return True
    wait_for(last_candles_complete, 60, "every market's last candle")
    for m in MARKETS:
        src = SRC[m]
        df = pd.DataFrame({k: src[k] for k in ("o", "h", "l", "c", "v", "value")},
                          index=pd.to_datetime(src["t"], unit="s", utc=True))
        for tf, rule in (("30m", None), ("4h", "4h"), ("1d", "1D")):
            ring = r.rings[tf]
            recs, _ = ring.read_last(ring.row_of(m), CAP)
            exp = df if rule is None else df.resample(rule, label="left", closed="left").agg(
                {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum", "value": "sum"}).dropna(subset=["o"])
            assert np.array_equal(recs["t"], exp.index.astype("int64") // 10**9), (m, tf)
            for f in ("o", "h", "l", "c"):
                assert np.array_equal(recs[f], exp[f].to_numpy()), (m, tf, f)
            for f in ("v", "value"):
                assert np.max(np.abs(recs[f] - exp[f].to_numpy()) / exp[f].to_numpy()) <= 1e-12, (m, tf, f)

    ing = r.ingest()
    assert int(ing["pid"]) == r.pid, "ingest was restarted"
    print("\nfault recovery times:")
    for k, v in r.recovery.items():
        print(f"  {k:<40} {v:6.2f} s")
    (env.tmp / "fault_recovery.json").write_text(json.dumps(r.recovery, indent=1))
