"""The replay exchange survives subscribers that die mid-send (regression: aiohttp's drain raised a
ConnectionError the fan-out did not catch, the replay task died silently and the exchange kept
saying RUNNING with a frozen clock), and a replay loop that does die fails the process loudly."""
import asyncio
import json
import socket
import struct

import pytest
import websocket

from procs.market.tape import ReplayTape, load_market_all
from procs.replay.server import ReplayExchange, serve
from procs.runtime.roster import STATUS_ROWS
from shm.status import State, StatusTable
from tests.helpers import ALL_MARKETS, DATA, attach, get_json, wait_for


def die_mid_send(port: int) -> None:
    """Subscribe to every trade, read a little, stop reading (the exchange's sends back up), then
    reset the connection (no close frame: a killed client)."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/websocket/v1", timeout=10)
    ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ALL_MARKETS}, {"format": "DEFAULT"}]))
    for _ in range(20):
        ws.recv()
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    import time
    time.sleep(0.3)                       # let the exchange fill the socket buffers and wait on drain
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.sock.close()                       # RST


def test_clients_dying_mid_send_never_freeze_the_replay(env):
    env.write_overlay(speed=0.0)
    env.start("exchange")
    port = env.port
    status = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    for k in range(5):
        die_mid_send(port)
        before = get_json(env.base + "/replay/status")["position"]
        # the next subscriber is served: the clock moves on
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/websocket/v1", timeout=10)
        ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}]))
        assert json.loads(ws.recv())["type"] == "trade", f"no trade after kill {k + 1}"
        ws.close()
        wait_for(lambda b=before: get_json(env.base + "/replay/status")["position"] > b, 10,
                 f"the replay to move after kill {k + 1}")
    st = get_json(env.base + "/replay/status")
    assert st["clients_dropped"] >= 1
    assert State(int(status.read("exchange")["state"])) is State.RUNNING
    assert "Traceback" not in env.log("exchange")


def test_a_dead_replay_loop_fails_the_server():
    tape = ReplayTape.build(DATA, ["KRW-BTC"], 6, 1730419200, 1730505600)
    ex = ReplayExchange(tape, load_market_all(DATA), speed=0.0)

    async def broken():
        raise RuntimeError("replay loop died")
    ex.replayer.run = broken

    async def main():
        await serve(ex, "127.0.0.1", 0, asyncio.Event())
    with pytest.raises(RuntimeError, match="replay loop died"):
        asyncio.run(asyncio.wait_for(main(), 10))


def test_an_empty_replay_window_fails_loudly(env):
    env.write_overlay(markets=["KRW-BTC"], exchange='start = "2030-01-01"\nend = "2030-02-01"')
    p = env.start("exchange")
    assert p.wait(timeout=60) == 1
    assert "nothing to replay" in env.log("exchange")
    status = StatusTable.open(env.instance, STATUS_ROWS)
    assert State(int(status.read("exchange")["state"])) is State.FAILED
