"""The replay exchange's WebSocket speaks Upbit's protocol."""
import json
import time

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
