"""The replay exchange's WebSocket speaks Upbit's protocol."""
import json
import time

import requests
import websocket

from tests.helpers import get_json, wait_for


def test_websocket_protocol(env):
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH"], speed=50_000.0)  # ~330 trades/s for minutes
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(f"{base}/replay/status"), 30, "the exchange")
    ws = websocket.create_connection(f"ws://127.0.0.1:{env.port}/websocket/v1", timeout=10)
    try:
        ws.send("PING")
        assert json.loads(ws.recv()) == {"status": "UP"}
        for req, name in (([{"type": "trade", "codes": ["KRW-BTC"]}], "NO_TICKET"),
                          ([{"ticket": "t"}], "NO_TYPE"),
                          ([{"ticket": "t"}, {"type": "trade"}], "NO_CODES"),
                          ([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"format": "XML"}],
                           "WRONG_FORMAT")):
            ws.send(json.dumps(req))
            assert json.loads(ws.recv())["error"]["name"] == name
        ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"format": "SIMPLE"}]))
        op, frame = ws.recv_data()
        assert op == websocket.ABNF.OPCODE_BINARY
        msg = json.loads(frame.decode("utf-8"))
        assert msg["ty"] == "trade" and msg["cd"] == "KRW-BTC" and isinstance(msg["sid"], int)
        # a new request replaces the subscription: only KRW-ETH from now on, DEFAULT format
        ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-ETH"], "is_only_realtime": True}]))
        deadline = time.monotonic() + 10
        seen = set()
        while time.monotonic() < deadline and len(seen) < 50:
            m = json.loads(ws.recv())
            seen.add((m.get("code") or m.get("cd"), "trade_price" in m))
            if ("KRW-ETH", True) in seen and len(seen) == 1 and m.get("code") == "KRW-ETH":
                break
        assert ("KRW-ETH", True) in seen
        tail = [json.loads(ws.recv()) for _ in range(50)]
        assert all(m["code"] == "KRW-ETH" and m["type"] == "trade" for m in tail)
        ws.send(json.dumps([{"ticket": "t"}, {"method": "LIST_SUBSCRIPTIONS"}]))
        for _ in range(2000):
            m = json.loads(ws.recv())
            if m.get("method") == "LIST_SUBSCRIPTIONS":
                assert m["result"] == [{"type": "trade", "codes": ["KRW-ETH"]}]
                break
        else:
            raise AssertionError("no LIST_SUBSCRIPTIONS answer")
    finally:
        ws.close()


def _subscribe(port: int, fmt: str, codes: list[str]) -> websocket.WebSocket:
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/websocket/v1", timeout=10)
    ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": codes}, {"format": fmt}]))
    return ws


def test_list_format_batches_what_is_due_together_in_order(env):
    """At full speed (speed 0) the trades due at one moment go out as one SIMPLE_LIST frame (at most 64), in the
    tape's order: market times never go back, and no trade is lost or repeated."""
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"], speed=0.0, exchange='end = "2024-11-03"')
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(f"{base}/replay/status"), 30, "the exchange")
    ws = _subscribe(env.port, "SIMPLE_LIST", ["KRW-BTC", "KRW-ETH", "KRW-XRP"])
    try:
        sizes, trades = [], []
        while len(trades) < 600:
            frame = json.loads(ws.recv())
            assert isinstance(frame, list) and frame
            sizes.append(len(frame))
            trades += frame
        assert max(sizes) > 1 and max(sizes) <= 64, sizes[:20]
        ts = [t["ttms"] for t in trades]
        assert ts == sorted(ts)
        keys = [(t["cd"], t["sid"]) for t in trades]
        assert len(set(keys)) == len(keys)
    finally:
        ws.close()


def test_rate_sends_evenly_and_restamps_market_time(env):
    """``{"rate": R}``: R trades a second whatever their market time, re-stamped to run at wall time."""
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH"], speed=1800.0)
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(f"{base}/replay/status"), 30, "the exchange")
    for bad in ({"rate": -1}, {"rate": "fast"}, {"rate": True}):
        assert requests.post(f"{base}/replay/control", json=bad, timeout=5).status_code == 400
    assert requests.post(f"{base}/replay/control", json={"rate": 500}, timeout=5).status_code == 200
    ws = _subscribe(env.port, "SIMPLE", ["KRW-BTC", "KRW-ETH"])
    try:
        msgs = [json.loads(ws.recv()) for _ in range(50)]           # the rate's clock starts with the stream
        t0 = time.monotonic()
        msgs = [json.loads(ws.recv()) for _ in range(1000)]
        wall = time.monotonic() - t0
        assert 1.6 < wall < 2.6, wall                                 # 1,000 trades at 500 a second
        ts = [m["ttms"] for m in msgs]
        assert ts == sorted(ts)
        assert 1600 < ts[-1] - ts[0] < 2400                           # market time ran at wall time
        # back to speed pacing: the tape goes on at once, and market time never goes back
        assert requests.post(f"{base}/replay/control", json={"speed": 1800}, timeout=5).status_code == 200
        t0 = time.monotonic()
        later = [json.loads(ws.recv()) for _ in range(20)]
        assert time.monotonic() - t0 < 3.0, "the replay stalled after the rate run"   # 20 trades: ~1.7 s at 1800x
        assert all(m["ttms"] >= ts[-1] for m in later)
    finally:
        ws.close()
