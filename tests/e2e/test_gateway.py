"""The gateway as a process: its REST answers are what shared memory holds (at the sequence it reports), bad
parameters get clear errors, it publishes the port it bound, and a port already in use stops it naming the key."""
import json
import socket

import requests

from shm.tables import CANDLES, INDICATORS, candles_with_indicators
from tests.e2e.test_monitor import fill_rings
from tests.helpers import wait_for


def _url(env) -> str:
    path = env.run_dir / "gateway.json"
    ep = wait_for(lambda: json.loads(path.read_text()) if path.exists() else None, 30, "the gateway's address")
    return f"http://{ep['host']}:{ep['port']}"


def test_rest_answers_are_what_shared_memory_holds(env):
    src = fill_rings(env.instance, n=300)
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH"])
    env.start("gateway")
    try:
        base = _url(env)
        cand = CANDLES.open(env.instance, "4h", 32, 2048)
        ind = INDICATORS.open(env.instance, "4h", 32, 2048)
        r = requests.get(f"{base}/api/candles", params={"market": "KRW-BTC", "tf": "4h", "count": 120}, timeout=10)
        assert r.status_code == 200, r.text
        doc = r.json()
        rows, values, count = candles_with_indicators(cand, ind, "KRW-BTC", 120)
        assert doc["seq"] == cand.global_seq and doc["count"] == count == len(src)
        assert doc["candles"] == rows and doc["indicators"] == values     # JSON round trip: the same numbers
        assert [c["t"] for c in doc["candles"]] == src["t"][-120:].tolist()
        assert doc["indicators"][-1]["ema_fast"] is not None and doc["indicators"][0]["rsi"] is not None

        # errors name what is wrong; nothing is served for a bad request
        bad = {("KRW-BTC", "1m", 10): 400, ("KRW-NOPE", "4h", 10): 404, ("BTC", "4h", 10): 422,
               ("KRW-BTC", "4h", 0): 422, ("KRW-BTC", "4h", 5000): 422}
        for (market, tf, n), code in bad.items():
            r = requests.get(f"{base}/api/candles", params={"market": market, "tf": tf, "count": n}, timeout=10)
            assert r.status_code == code, (market, tf, n, r.status_code, r.text)
        assert "shm.timeframes" in requests.get(f"{base}/api/candles", params={"market": "KRW-BTC", "tf": "1m"},
                                                timeout=10).json()["detail"]

        health = wait_for(lambda: (lambda d: d if d["programs"] else None)(
            requests.get(f"{base}/api/health", timeout=10).json()), 30, "the gateway's own status row")
        gw = {p["name"]: p for p in health["programs"]}["gateway"]
        assert gw["state"] == "RUNNING" and gw["heartbeat_age_s"] < 5 and base.rsplit(":", 1)[1] in gw["detail"]

        markets = requests.get(f"{base}/api/markets", timeout=10).json()
        assert markets["available"] is False and [m["market"] for m in markets["markets"]] == ["KRW-BTC", "KRW-ETH"]
        assert requests.get(f"{base}/docs", timeout=10).status_code == 200
        assert "/api/candles" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    finally:
        env.stop_all()
    assert not (env.run_dir / "gateway.json").exists()     # withdrawn on a clean stop


def test_a_port_in_use_stops_start_up_naming_the_key(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env.write_overlay(gateway=f"port = {port}")
        p = env.start("gateway")
        assert p.wait(timeout=30) != 0
    assert f"gateway.port = {port}" in env.log("gateway")
