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


def test_the_engine_answers_are_the_trader_tables(env):
    from procs.runtime.loader import load_config
    from shm.tables import TIMELINE, TIMELINE_ROW
    from shm.trading import OrdersTable, PositionsTable, TraderTable, record_dict
    from tests.e2e.test_monitor_trading import fill_trader

    src = fill_rings(env.instance)
    fill_trader(env.instance, src, reason="armed by operator")
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"])
    env.start("gateway")
    try:
        base = _url(env)
        get = lambda path, **p: requests.get(f"{base}{path}", params=p, timeout=10).json()
        sh = load_config("replay").base.shm    # the sizes fill_trader wrote the tables with
        trader = TraderTable.open(env.instance, 1)
        rows, version = trader.read_all()
        eng = get("/api/engine")
        assert eng["available"] and eng["version"] == version and eng["mode"] == "ARMED"
        assert eng["equity"] == float(rows[0]["equity"]) and eng["reason"] == "armed by operator"
        assert eng["risk_flags"] == [] and eng["preset"] == "BALANCED" and 0 <= eng["age_s"] < 60
        pnl = get("/api/pnl")
        assert pnl["realized"] == float(rows[0]["realized"]) and "reason" not in pnl

        pos, pver = PositionsTable.open(env.instance, sh.rows).used("code")
        got = get("/api/positions")
        assert got["version"] == pver and got["positions"] == [record_dict(r) for r in pos]
        assert [p["code"] for p in got["positions"]] == ["KRW-BTC", "KRW-ETH"]

        orders, over = OrdersTable.open(env.instance, sh.orders_rows).used("identifier")
        got = get("/api/orders")
        assert got["version"] == over and got["orders"] == [record_dict(r) for r in orders]
        assert [o["created_ms"] for o in got["orders"]] == sorted((o["created_ms"] for o in got["orders"]),
                                                                 reverse=True)

        tl = get("/api/timeline", n=5)
        recs, count = TIMELINE.open(env.instance, None, 1, sh.timeline_capacity).read_last_of(TIMELINE_ROW, 5)
        assert tl["count"] == count == 8 and [e["text"] for e in tl["timeline"]] == [record_dict(r)["text"]
                                                                                   for r in recs]
        assert [e["severity"] for e in tl["timeline"]] == ["info", "warn", "info", "info", "alert"]
        assert requests.get(f"{base}/api/timeline", params={"n": 0}, timeout=10).status_code == 422
    finally:
        env.stop_all()


def test_without_a_token_no_command_gets_through(env):
    from procs.gateway.app import COMMAND_TYPES

    env.write_overlay()
    env.start("gateway")
    try:
        base = _url(env)
        for name in COMMAND_TYPES:
            for headers in ({}, {"Authorization": "Bearer " + "x" * 32}):
                r = requests.post(f"{base}/api/commands/{name}", json={"payload": {}}, headers=headers, timeout=10)
                assert r.status_code == 403, (name, r.status_code, r.text)
                assert "SMTM_GATEWAY_TOKEN" in r.json()["detail"]
    finally:
        env.stop_all()


def test_with_the_token_commands_reach_the_trader_and_its_rules_still_apply(env):
    token = "t0k3n-" + "a" * 26
    env.write_overlay()
    env.start("trader")
    env.env["SMTM_GATEWAY_TOKEN"] = token
    env.start("gateway")
    try:
        base = _url(env)
        wait_for((env.run_dir / "trader.sock").exists, 30, "the trader's socket")
        auth = {"Authorization": f"Bearer {token}"}
        post = lambda name, headers=auth, **payload: requests.post(
            f"{base}/api/commands/{name}", json={"payload": payload}, headers=headers, timeout=15)
        assert post("PING", headers={}).status_code == 401
        assert post("PING", headers={"Authorization": f"Bearer {token[:-1]}x"}).status_code == 401
        assert post("NOT.A.COMMAND").status_code == 404
        assert post("PING").json()["ok"] is True
        assert post("KILL.SWITCH", reason="gateway test").json()["payload"]["mode"] == "KILLED"
        r = post("LIVE.ARM", reason="from the gateway")          # the engine's rule: KILL.RESET first
        assert r.status_code == 409 and "KILL.RESET" in r.json()["error"]["message"]
        assert post("KILL.RESET", reason="gateway test").json()["payload"]["mode"] == "DISARMED"
        status = post("ENGINE.STATUS").json()["payload"]
        assert status["mode"] == "DISARMED"
        log = env.log("gateway") + env.log("trader")
        assert token not in log          # never logged
    finally:
        env.stop_all()
