"""The gateway as a process: its REST answers are what shared memory holds (at the sequence it reports), bad
parameters get clear errors, it publishes the port it bound, and a port already in use stops it naming the key."""
import json
import socket
import time

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
        docs = requests.get(f"{base}/docs", timeout=10)
        assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()          # served from the gateway: works without network
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"):
            assert requests.get(f"{base}/static/vendor/swagger-ui/{asset}", timeout=10).status_code == 200
        # only requests naming this machine, only WebSockets from its pages (DNS rebinding, other sites' pages)
        assert requests.get(f"{base}/api/health", headers={"Host": "evil.example"}, timeout=10).status_code == 400
        import websocket
        try:
            _ws(base, "orders", origin="http://evil.example")
            raise AssertionError("a WebSocket from another origin was accepted")
        except websocket.WebSocketBadStatusException as e:
            assert e.status_code == 403
        _ws(base, "orders", origin=base).close()
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
        for name in (*COMMAND_TYPES, "NOT.A.COMMAND"):
            for headers in ({}, {"Authorization": "Bearer " + "x" * 32}, {"Authorization": "Basic eDp5"}):
                for body in ({"json": {"payload": {}}}, {"data": b"{not json"}, {"json": {"payload": 1, "x": 2}}):
                    r = requests.post(f"{base}/api/commands/{name}", headers=headers, timeout=10, **body)
                    assert r.status_code == 403, (name, headers, body, r.status_code, r.text)   # before anything else
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
        bad = requests.post(f"{base}/api/commands/PING", data=b"{not json", headers=auth, timeout=10)
        assert bad.status_code == 422 and "not json" not in bad.text      # the body is looked at once authorized
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


def _ws(base: str, channel: str, **kw):
    import websocket
    return websocket.create_connection(base.replace("http://", "ws://") + f"/ws/{channel}", timeout=10, **kw)


def _recv(ws, want: str, limit: int = 50) -> dict:
    """The next message of type ``want`` (others skipped, at most ``limit``)."""
    for _ in range(limit):
        msg = json.loads(ws.recv())
        if msg["type"] == want:
            return msg
    raise AssertionError(f"no {want} in {limit} messages")


def test_websocket_channels_carry_what_shared_memory_holds(env):
    import numpy as np

    from shm.tables import CANDLE_DTYPE
    from shm.trading import OrdersTable, record_dict
    from tests.e2e.test_monitor_trading import fill_trader

    src = fill_rings(env.instance)
    fill_trader(env.instance, src)
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"])
    env.start("gateway")
    try:
        base = _url(env)
        cand = CANDLES.create(env.instance, "4h", 32, 2048)     # the test is the writer (as ingest would be)
        ind = INDICATORS.open(env.instance, "4h", 32, 2048)
        m = _ws(base, "market")
        m.send(json.dumps({"subscribe": [{"market": "KRW-BTC", "tf": "4h"}, {"market": "KRW-BTC", "tf": "9h"}]}))
        assert "needs a market and a tf" in _recv(m, "error")["error"]
        assert _recv(m, "subscribed")["subscriptions"] == [{"market": "KRW-BTC", "tf": "4h"}]
        up = _recv(m, "candle.update")
        rows, values, _ = candles_with_indicators(cand, ind, "KRW-BTC", 1)
        assert up["candle"] == rows[-1] and up["indicators"] == values[-1] and up["seq"] == cand.global_seq

        # a new candle begins: the one before it is sent as closed, the new one as an update
        row = cand.row_of("KRW-BTC")
        last = rows[-1]
        rec = np.zeros(1, CANDLE_DTYPE)
        rec[0] = (last["t"] + 4 * 3600, 100.0, 101.0, 99.0, 100.5, 2.0, 201.0, 3, 0)
        cand.write_many(row, cand.count(row), rec)
        cand.publish()
        closed = _recv(m, "candle.close")
        assert closed["candle"] == last
        new = _recv(m, "candle.update")
        assert new["candle"]["t"] == last["t"] + 4 * 3600 and new["candle"]["c"] == 100.5
        # two candles begin between two looks: both candles that closed are sent, oldest first
        two = np.zeros(2, CANDLE_DTYPE)
        t_new = last["t"] + 4 * 3600
        two[0] = (t_new + 4 * 3600, 100.5, 102.0, 100.0, 101.0, 1.0, 101.0, 2, 0)
        two[1] = (t_new + 8 * 3600, 101.0, 103.0, 100.5, 102.5, 1.0, 102.5, 2, 0)
        cand.write_many(row, cand.count(row), two)
        cand.publish()
        assert [_recv(m, "candle.close")["candle"]["t"] for _ in range(2)] == [t_new, t_new + 4 * 3600]
        assert _recv(m, "candle.update")["candle"]["t"] == t_new + 8 * 3600
        m.send(json.dumps({"type": "ping"}))
        assert _recv(m, "pong")["channel"] == "market"
        m.send(b"\x00binary")
        assert "JSON" in _recv(m, "error")["error"]
        m.send(json.dumps({"subscribe": 5}))
        assert "list" in _recv(m, "error")["error"]
        m.close()

        o = _ws(base, "orders")
        first = _recv(o, "orders")
        table = OrdersTable.open(env.instance, 64)
        rows, version = table.used("identifier")
        assert first["version"] == version and first["orders"] == [record_dict(r) for r in rows]
        writer = OrdersTable.writer(env.instance, 64)
        all_rows, _ = writer.read_all()
        all_rows[0]["state"] = b"filled"
        writer.write_rows(slice(None), all_rows)
        second = _recv(o, "orders")
        assert second["version"] > first["version"] and second["orders"][0]["state"] == "filled"
        o.close()

        t = _ws(base, "timeline")
        assert len(_recv(t, "timeline")["timeline"]) == 8
        t.close()
        # 600 entries while nobody watches, then a client: the newest 50 on connect, then only what is new
        from shm.tables import TIMELINE, TIMELINE_DTYPE, TIMELINE_ROW
        tl = TIMELINE.create(env.instance, None, 1, 1024)
        trow = tl.row_of(TIMELINE_ROW)

        def entries(n, tag):
            recs = np.zeros(n, TIMELINE_DTYPE)
            recs["kind"], recs["text"] = b"note", [f"{tag} {i}".encode() for i in range(n)]
            tl.write_many(trow, tl.count(trow), recs)
            tl.publish()
        entries(600, "quiet")
        t = _ws(base, "timeline")
        greeting = _recv(t, "timeline")
        assert greeting["count"] == 608 and greeting["timeline"][-1]["text"] == "quiet 599"
        entries(3, "new")
        got = _recv(t, "timeline.entries")
        assert [e["text"] for e in got["entries"]] == ["new 0", "new 1", "new 2"] and got["skipped"] == 0
        t.close()
        stats = requests.get(f"{base}/api/clients", timeout=10).json()
        assert stats["messages_sent"]["market"] >= 4 and stats["dropped"] == 0
    finally:
        env.stop_all()


def test_a_client_that_stops_reading_is_dropped(env):
    import socket as sk

    import numpy as np
    import websocket

    from shm.trading import ORDER_DTYPE, OrdersTable

    env.write_overlay(gateway="port = 0\nclient_queue = 4\npoll_s = 0.01")
    writer = OrdersTable.writer(env.instance, 64)
    rows = np.zeros(64, ORDER_DTYPE)
    rows["identifier"] = [f"order-{i:04d}-{'x' * 30}".encode() for i in range(64)]
    rows["code"], rows["state"], rows["reason"] = b"KRW-BTC", b"accepted", b"r" * 48
    writer.write_rows(slice(None), rows)
    env.start("gateway")
    try:
        base = _url(env)
        slow = _ws(base, "orders", sockopt=((sk.SOL_SOCKET, sk.SO_RCVBUF, 4096),))
        fast = _ws(base, "stats")
        assert _recv(slow, "orders")["orders"]
        deadline = time.monotonic() + 60         # the table keeps moving; the slow client reads nothing more: once
        i = 0                                     # the socket buffers between them are full its queue fills
        while time.monotonic() < deadline:
            i += 1
            rows["filled"] = i
            writer.write_rows(slice(None), rows)
            if i % 50 == 0 and requests.get(f"{base}/api/clients", timeout=10).json()["dropped"]:
                break
            time.sleep(0.005)
        stats = requests.get(f"{base}/api/clients", timeout=10).json()
        assert stats["dropped"] == 1 and stats["clients"]["orders"] == 0 and stats["clients"]["stats"] == 1, stats
        code = None
        for _ in range(10_000):                    # what was already on its way, then the close frame
            frame = slow.recv_data_frame(True)[1]
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big")
                break
        assert code == 4008
        assert any(_recv(fast, "stats")["dropped"] == 1 for _ in range(10))     # the others go on
    finally:
        env.stop_all()


def test_surge_alerts_from_the_candle_ring(env):
    import numpy as np

    from procs.market.surge import SurgeRule, surge_at
    from shm.tables import CANDLE_DTYPE

    fill_rings(env.instance, n=300)
    env.write_overlay(markets=["KRW-BTC"])
    env.start("gateway")
    try:
        base = _url(env)
        cand = CANDLES.create(env.instance, "30m", 32, 2048)
        row = cand.row_of("KRW-BTC")
        recs, _ = cand.read_last(row, 26)
        before = requests.get(f"{base}/api/surge", timeout=10).json()
        assert before["tf"] == "30m" and before["markets"][0]["market"] == "KRW-BTC"
        assert before["markets"][0]["fired"] == surge_at(recs, SurgeRule())["fired"] is False
        s = _ws(base, "surge")
        assert _recv(s, "surge.state")["markets"] == []
        # two candles: +10 % on ten times the traded value of the 12 hours before
        last = recs[-1]
        add = np.zeros(2, CANDLE_DTYPE)
        value = float(recs["value"][-24:].mean()) * 10
        p0 = float(last["c"])
        add[0] = (int(last["t"]) + 1800, p0, p0 * 1.05, p0, p0 * 1.05, 1.0, value, 10, 0)
        add[1] = (int(last["t"]) + 3600, p0 * 1.05, p0 * 1.11, p0 * 1.05, p0 * 1.10, 1.0, value, 10, 0)
        cand.write_many(row, cand.count(row), add)
        cand.publish()
        alert = _recv(s, "surge")
        assert alert["market"] == "KRW-BTC" and alert["t"] == int(add[1]["t"]) and alert["fired"] is True
        assert alert["return_pct"] > 9.9 and alert["value_ratio"] > 9.9
        now = requests.get(f"{base}/api/surge", timeout=10).json()
        assert now["markets"][0]["fired"] is True and now["rule"]["min_return_pct"] == 5.0
        s.close()
    finally:
        env.stop_all()
