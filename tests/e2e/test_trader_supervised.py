"""The trader under supervisord, on the replay: bad input on the command socket never stops it trading;
kill -9 while armed brings it back with the same positions, cash and open orders, the mode rule of
seed §9 (ARMED again for the paper broker of the replay profile, KILLED stays KILLED), and no order
sent twice."""
from __future__ import annotations

import os
import signal
import socket
import struct
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import requests

from procs.trading.client import TraderClient
from procs.trading.protocol import FrameDecoder, encode, make_command
from shm.segment import list_instance_objects, unlink_instance
from tests.helpers import Env, start_supervisord, stop_supervisord, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-DOGE", "KRW-SHIB"]
TRADER = """
[trader]
arm_on_start = true
[trader.strategy]
rule = "macd_cross"
"""


@pytest.fixture
def supervised(tmp_path):
    inst = f"t{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp_path, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
    env.write_overlay(markets=MARKETS, speed=7200.0, tail=TRADER + "\n[symbols]\ntop_n = 6\n")
    sup, conf = start_supervisord(env)
    try:
        wait_for(lambda: sup.running() and all(p["statename"] == "RUNNING" for p in sup.processes()), 60,
                 "every program RUNNING")
        sock = env.run_dir / "trader.sock"
        wait_for(sock.exists, 30, "the trader's socket")
        yield env, sup, sock
    finally:
        stop_supervisord(sup)
        unlink_instance(inst)
        assert not list_instance_objects(inst)


def _status(sock) -> dict:
    with TraderClient(sock) as c:
        return c.request("ENGINE.STATUS")["payload"]


def _raw(sock, data: bytes, read: bool = True) -> dict | None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(sock))
    s.sendall(data)
    if not read:
        s.close()
        return None
    dec, out = FrameDecoder(1 << 20), []
    while not out:
        chunk = s.recv(65536)
        if not chunk:
            break
        out = dec.feed(chunk)
    s.close()
    import orjson
    return orjson.loads(out[0]) if out else None


def test_bad_input_never_stops_the_engine(supervised):
    env, sup, sock = supervised
    seen0 = wait_for(lambda: _status(sock)["trades_seen"] or None, 60, "trades at the trader")
    assert _raw(sock, struct.pack(">I", 7) + b"{nope!}")["error"]["code"] == "BAD_JSON"
    assert _raw(sock, struct.pack(">I", 1 << 30))["error"]["code"] == "FRAME_TOO_LARGE"
    assert _raw(sock, encode(make_command("NO.SUCH", {})))["error"]["code"] == "UNKNOWN_TYPE"
    assert _raw(sock, encode({"v": 1, "type": "PING"}))["error"]["code"] == "BAD_HEADER"
    _raw(sock, struct.pack(">I", 100) + b'{"v":1,', read=False)      # gone mid-frame
    bad = _raw(sock, encode(make_command("CONFIG.APPLY", {"params": {"take_profit_pct": -1}})))
    assert bad["error"]["code"] in ("REFUSED", "INVALID")
    results: list[bool] = []

    def client():
        with TraderClient(sock) as c:
            results.append(all(c.request("PING")["ok"] for _ in range(3)))
    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(True) == 100
    pid = {p["name"]: p["pid"] for p in sup.processes()}["trader"]
    wait_for(lambda: _status(sock)["trades_seen"] > seen0, 30, "the trader to keep trading")
    assert {p["name"]: p["pid"] for p in sup.processes()}["trader"] == pid


def test_event_stream(supervised):
    env, sup, sock = supervised
    kinds: set[str] = set()
    with TraderClient(sock, timeout_s=10) as c:
        for ev in c.events():
            kinds.add(ev["type"])
            if {"EVT.HEARTBEAT", "DATA.CANDLE.CLOSE", "INDICATOR.UPDATE", "DATA.CANDLE.UPDATE"} <= kinds:
                break
    assert "ENGINE.STATUS.UPDATE" in kinds or "EVT.HEARTBEAT" in kinds


def _pause(env: Env, paused: bool) -> None:
    r = requests.post(f"{env.base}/replay/control", json={"pause": True} if paused else {"resume": True}, timeout=5)
    assert r.status_code == 200 and r.json()["paused"] is paused, r.text


def _state(sock) -> tuple:
    with TraderClient(sock) as c:
        st = c.request("ENGINE.STATUS")["payload"]
        pos = sorted((p["market"], p["qty"], p["avg_price"], p["state"]) for p in
                     c.request("POSITIONS.GET")["payload"]["positions"])
        orders = c.request("ORDERS.GET", {"n": 1000})["payload"]["orders"]
    return st["mode"], st["cash"], pos, sorted((o["identifier"], o["state"]) for o in orders)


def _kill9(sup, sock) -> None:
    pid = {p["name"]: p["pid"] for p in sup.processes()}["trader"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (lambda p: p["statename"] == "RUNNING" and p["pid"] not in (0, pid))(
        {p["name"]: p for p in sup.processes()}["trader"]), 60, "supervisord to restart the trader")
    wait_for(lambda: _try_status(sock), 30, "the restarted trader's socket")


def _try_status(sock):
    try:
        return _status(sock)
    except OSError:
        return None


def test_kill_minus_9_while_armed(supervised):
    env, sup, sock = supervised
    wait_for(lambda: _status(sock)["open_positions"] > 0, 120, "a position", interval=0.2)
    _pause(env, True)
    wait_for(lambda: (lambda a, b: a == b)(_state(sock), _state(sock)), 10, "the trader to settle")
    before = _state(sock)
    assert before[0] == "ARMED"
    _kill9(sup, sock)
    after = _state(sock)
    assert after == before           # mode, cash, positions and every order (none new, none lost)
    _pause(env, False)
    with TraderClient(sock) as c:
        assert c.request("KILL.SWITCH", {"reason": "test"})["payload"]["mode"] == "KILLED"
    _kill9(sup, sock)
    st = _status(sock)
    assert st["mode"] == "KILLED"
    with TraderClient(sock) as c:
        refused = c.request("LIVE.ARM")
        assert not refused["ok"] and refused["error"]["code"] == "REFUSED"
        assert c.request("KILL.RESET")["payload"]["mode"] == "DISARMED"
    idents = [o[0] for o in _state(sock)[3]]
    assert len(idents) == len(set(idents))
