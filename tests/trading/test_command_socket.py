"""The trader's command socket (procs.trading.protocol / server / client) against a fake handler: framing
limits, header validation, ordering, misbehaving clients, concurrency, event fan-out with slow-subscriber
dropping, and the socket file's life (mode 0600, stale file replaced, unlinked on stop)."""
from __future__ import annotations

import logging
import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import orjson
import pytest

from procs.trading.client import TraderClient, TraderUnavailable
from procs.trading.protocol import (
    COMMANDS,
    PREFIX,
    CommandError,
    FrameDecoder,
    ProtocolError,
    encode,
    make_command,
)
from procs.trading.server import CommandServer, ServerAlreadyRunning
from tests.helpers import wait_for

MAX_FRAME = 4096


class FakeHandler:
    """Records every command; LIVE.ARM is refused, ORDER.CANCEL blows up, PNL.GET answers something
    JSON cannot hold; everything else echoes."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def __call__(self, cmd):
        with self.lock:
            self.seen.append(cmd)
        if cmd.type == "PING":
            return {"pong": True}
        if cmd.type == "LIVE.ARM":
            raise CommandError("REFUSED", "the kill switch is on")
        if cmd.type == "ORDER.CANCEL":
            raise RuntimeError("boom")
        if cmd.type == "PNL.GET":
            return {"x": object()}
        return {"type": cmd.type, "payload": cmd.payload, "symbol": cmd.symbol}

    def types(self) -> list[str]:
        with self.lock:
            return [c.type for c in self.seen]


class Raw:
    """A hand-driven client: sends raw frames, reads raw answers."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(path))
        self.dec = FrameDecoder(1 << 24)
        self.frames: deque[bytes] = deque()

    def send_body(self, body: bytes) -> None:
        self.sock.sendall(PREFIX.pack(len(body)) + body, socket.MSG_NOSIGNAL)

    def send(self, msg: dict) -> None:
        self.sock.sendall(encode(msg), socket.MSG_NOSIGNAL)

    def recv(self) -> dict | None:
        """The next message, or None at end of stream."""
        while not self.frames:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.frames.extend(self.dec.feed(data))
        return orjson.loads(self.frames.popleft())

    def ask(self, msg: dict) -> dict:
        self.send(msg)
        return self.recv()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="smtm"))   # Unix socket paths are limited to 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_server(sockdir):
    started = []

    def make(**kw) -> CommandServer:
        opts = {"run_id": "run-test", "max_frame_bytes": MAX_FRAME, "max_clients": 128, "subscriber_queue": 16,
                "log": logging.getLogger("test.command_server")}
        opts.update(kw)
        handler = opts.pop("handler", None) or FakeHandler()
        s = CommandServer(opts.pop("path", sockdir / "trader.sock"), handler, **opts)
        s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def cmd(type="ENGINE.STATUS", seq=1, **kw) -> dict:
    return make_command(type, kw.pop("payload", {}), kw.pop("symbol", None), seq=seq, run_id="test")


def error(ack: dict) -> str:
    assert ack["type"] == "ACK" and ack["ok"] is False, ack
    return ack["error"]["code"]


# -- framing ----------------------------------------------------------------------------------------------------
def test_decoder_splits_frames_fed_byte_by_byte_and_refuses_a_big_prefix_at_once():
    dec = FrameDecoder(100)
    stream = encode({"a": 1}) + encode({"b": [2, 3]})
    got = []
    for i in range(len(stream)):
        got += dec.feed(stream[i:i + 1])
    assert [orjson.loads(b) for b in got] == [{"a": 1}, {"b": [2, 3]}]
    assert dec.pending == 0
    with pytest.raises(ProtocolError) as e:
        dec.feed(PREFIX.pack(1 << 30))   # four bytes are enough to refuse it
    assert e.value.code == "FRAME_TOO_LARGE" and e.value.fatal
    dec = FrameDecoder(100)
    dec.feed(PREFIX.pack(100) + b"x" * 50)
    assert dec.room() == 50   # never read past one frame's worth of buffer


def test_ping_round_trip_with_header_echo_and_peer(server):
    with TraderClient(server.path) as t:
        ack = t.request("PING", symbol="KRW-BTC")
    assert ack["ok"] is True and ack["error"] is None and ack["payload"] == {"pong": True}
    assert ack["v"] == 1 and ack["run_id"] == "run-test" and ack["seq"] == 1 and ack["symbol"] == "KRW-BTC"
    assert isinstance(ack["ts"], float) and abs(ack["ts"] - time.time()) < 60
    (seen,) = server.handler.seen
    assert seen.type == "PING" and seen.seq == 1 and seen.symbol == "KRW-BTC"
    assert seen.peer == f"pid {os.getpid()} uid {os.getuid()}"


def test_refused_command_is_an_error_ack(server):
    with TraderClient(server.path) as t:
        ack = t.request("LIVE.ARM", {"reason": "test"})
        assert error(ack) == "REFUSED" and ack["error"]["message"] == "the kill switch is on"
        assert t.request("PING")["ok"]
    assert server.errors == 1 and server.commands == 2


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe{}", b"", b'{"v": 1,'], ids=["garbage", "not-utf8",
                                                                                       "empty", "truncated"])
def test_malformed_json_is_answered_and_the_connection_stays(server, body):
    c = Raw(server.path)
    c.send_body(body)
    ack = c.recv()
    assert error(ack) == "BAD_JSON" and ack["seq"] is None
    assert c.ask(cmd("PING", seq=1))["ok"]
    c.close()


@pytest.mark.parametrize("body", [b"[1, 2]", b'"PING"', b"42", b"null"])
def test_json_that_is_not_an_object(server, body):
    c = Raw(server.path)
    c.send_body(body)
    ack = c.recv()
    assert error(ack) == "BAD_JSON" and "object" in ack["error"]["message"]
    c.close()
    assert server.handler.seen == []


def _rss_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_a_1_gib_length_prefix_costs_nothing_and_closes_only_that_connection(server):
    before = _rss_peak_kib()
    c = Raw(server.path)
    c.sock.sendall(PREFIX.pack(1 << 30) + b'{"v":1', socket.MSG_NOSIGNAL)
    ack = c.recv()
    assert error(ack) == "FRAME_TOO_LARGE" and str(MAX_FRAME) in ack["error"]["message"]
    assert c.recv() is None   # closed
    c.close()
    assert _rss_peak_kib() - before < 64 * 1024   # nothing near 1 GiB was allocated
    with TraderClient(server.path) as t:
        assert t.request("PING")["ok"]


def test_frame_size_limit_is_exact(server):
    c = Raw(server.path)
    msg = cmd("ENGINE.STATUS", payload={"pad": ""})
    pad = MAX_FRAME - len(orjson.dumps(msg))
    msg["payload"]["pad"] = "x" * pad
    assert len(orjson.dumps(msg)) == MAX_FRAME
    assert c.ask(msg)["ok"]
    msg["payload"]["pad"] += "x"
    msg["seq"] = 2
    assert error(c.ask(msg)) == "FRAME_TOO_LARGE"
    assert c.recv() is None
    c.close()


def test_unknown_type_names_the_known_ones(server):
    c = Raw(server.path)
    ack = c.ask(cmd("ENGINE.EXPLODE", seq=7, symbol="KRW-ETH"))
    assert error(ack) == "UNKNOWN_TYPE" and ack["seq"] == 7 and ack["symbol"] == "KRW-ETH"
    assert all(t in ack["error"]["message"] for t in COMMANDS)
    assert error(c.ask(cmd("ACK", seq=8))) == "UNKNOWN_TYPE"   # an ACK or an event is no command
    assert error(c.ask(cmd("FILL", seq=9))) == "UNKNOWN_TYPE"
    c.close()
    assert server.handler.seen == []


@pytest.mark.parametrize("field", ["v", "type", "ts", "run_id", "symbol", "seq", "payload"])
def test_each_missing_header_field_is_named(server, field):
    c = Raw(server.path)
    msg = cmd()
    del msg[field]
    ack = c.ask(msg)
    assert error(ack) == "BAD_HEADER" and repr(field) in ack["error"]["message"]
    c.close()
    assert server.handler.seen == []


@pytest.mark.parametrize("field,value", [("v", "1"), ("v", True), ("type", 3), ("ts", "now"), ("ts", None),
                                         ("run_id", None), ("symbol", 5), ("seq", -1), ("seq", 1.0), ("seq", True),
                                         ("payload", []), ("payload", None)])
def test_ill_typed_header_fields_are_named(server, field, value):
    c = Raw(server.path)
    ack = c.ask({**cmd(), field: value})
    assert error(ack) == "BAD_HEADER" and repr(field) in ack["error"]["message"]
    c.close()


def test_other_protocol_versions_are_refused(server):
    c = Raw(server.path)
    ack = c.ask({**cmd(seq=3), "v": 2})
    assert error(ack) == "BAD_VERSION" and ack["seq"] == 3
    c.close()


def test_seq_must_increase_per_connection(server):
    c, d = Raw(server.path), Raw(server.path)
    assert c.ask(cmd(seq=5))["ok"]
    for seq in (5, 3, 0):
        ack = c.ask(cmd("KILL.SWITCH", seq=seq))
        assert error(ack) == "OUT_OF_ORDER" and ack["seq"] == seq
    assert d.ask(cmd(seq=1))["ok"]   # another connection counts on its own
    assert c.ask(cmd(seq=6))["ok"]
    c.close()
    d.close()
    assert server.handler.types() == ["ENGINE.STATUS"] * 3   # the KILL.SWITCHes were not executed
    assert [x.seq for x in server.handler.seen] == [5, 1, 6]


@pytest.mark.parametrize("sent", [PREFIX.pack(100)[:2], PREFIX.pack(100) + b'{"v":1,"ty'], ids=["in-prefix",
                                                                                              "in-body"])
def test_a_client_that_disconnects_mid_frame_just_goes_away(server, sent):
    c = Raw(server.path)
    c.sock.sendall(sent)
    wait_for(lambda: server.clients == 1, 5, "the server to accept")
    c.close()
    wait_for(lambda: server.clients == 0, 5, "the server to drop the connection")
    with TraderClient(server.path) as t:
        assert t.request("PING")["ok"]
    assert server.errors == 0 and server.handler.types() == ["PING"]


def test_100_concurrent_clients_all_answered(make_server):
    server = make_server(max_clients=128)
    n_clients, n_cmds = 100, 5
    barrier = threading.Barrier(n_clients)
    results, failures = {}, []

    def client(i: int) -> None:
        try:
            with TraderClient(server.path, timeout_s=20) as t:
                t.request("PING")   # connected
                barrier.wait(20)
                got = []
                for k in range(n_cmds):
                    ack = t.request("ENGINE.STATUS", {"i": i, "k": k}, symbol=f"M{i}")
                    assert ack["ok"] and ack["seq"] == k + 2, ack
                    got.append((ack["payload"]["payload"]["i"], ack["payload"]["payload"]["k"], ack["symbol"]))
                results[i] = got
        except Exception as e:   # reported below, with the client's number
            failures.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not failures, failures[:5]
    assert len(results) == n_clients
    for i, got in results.items():
        assert got == [(i, k, f"M{i}") for k in range(n_cmds)]
    assert server.commands == n_clients * (n_cmds + 1) and server.errors == 0
    wait_for(lambda: server.clients == 0, 5, "every connection to close")


def test_handler_exception_is_internal_and_the_server_keeps_going(server, caplog):
    with caplog.at_level(logging.ERROR, logger="test.command_server"), TraderClient(server.path) as t:
        ack = t.request("ORDER.CANCEL", {"identifier": "x"})
        assert error(ack) == "INTERNAL" and ack["error"]["message"] == "RuntimeError: boom"
        ack = t.request("PNL.GET")   # an answer JSON cannot hold
        assert error(ack) == "INTERNAL" and "TypeError" in ack["error"]["message"]
        assert t.request("PING")["ok"]
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 2 and "boom" in caplog.text   # with the traceback
    with TraderClient(server.path) as t:
        assert t.request("PING")["ok"]


def test_more_than_max_clients_are_refused(make_server):
    server = make_server(max_clients=2)
    a, b = TraderClient(server.path), TraderClient(server.path)
    assert a.request("PING")["ok"] and b.request("PING")["ok"]
    with TraderClient(server.path) as c:
        ack = c.request("PING")
    assert error(ack) == "TOO_MANY_CLIENTS" and ack["seq"] is None
    a.close()
    wait_for(lambda: server.clients == 1, 5, "the server to see a client go")
    with TraderClient(server.path) as c:
        assert c.request("PING")["ok"]
    b.close()


# -- events ------------------------------------------------------------------------------------------------------
def test_subscriber_gets_events_with_header_and_its_own_seq(server):
    with TraderClient(server.path) as t, TraderClient(server.path) as fills:
        stream = t.events()
        only_fills = fills.events(["FILL", "MODE."])
        assert server.publish("ORDER.UPDATE", {"identifier": "a"}, symbol="KRW-BTC") == 1
        assert server.publish("FILL", {"qty": 1.5}) == 2
        assert server.publish("MODE.KILLED", {"reason": "test"}) == 2
        evs = [next(stream) for _ in range(3)]
        assert [e["type"] for e in evs] == ["ORDER.UPDATE", "FILL", "MODE.KILLED"]
        assert [e["seq"] for e in evs] == [0, 1, 2]
        assert evs[0]["symbol"] == "KRW-BTC" and evs[0]["run_id"] == "run-test" and evs[0]["v"] == 1
        assert evs[0]["payload"] == {"identifier": "a"} and isinstance(evs[0]["ts"], float)
        got = [next(only_fills) for _ in range(2)]
        assert [(e["type"], e["seq"]) for e in got] == [("FILL", 0), ("MODE.KILLED", 1)]
        assert t.request("PING")["ok"]   # a subscriber still sends commands
        server.publish("EVT.HEARTBEAT", {})
        assert next(stream)["seq"] == 3
    with pytest.raises(ValueError):
        server.publish("NOT.AN.EVENT", {})
    with TraderClient(server.path) as t, pytest.raises(CommandError) as e:
        t.events(["NOPE"])
    assert e.value.code == "INVALID"


def test_a_subscriber_that_never_reads_is_dropped_while_a_normal_one_keeps_receiving(server):
    slow = Raw(server.path)
    assert slow.ask(cmd("EVENT.SUBSCRIBE"))["ok"]
    with TraderClient(server.path) as t:
        stream = t.events()
        payload = {"blob": "x" * 8000}
        seqs = []
        for i in range(2000):   # noqa: B007 -- kernel buffers + the server's high water + 16 queued events, then dropped
            assert server.publish("DATA.CANDLE.UPDATE", payload) >= 1
            ev = next(stream)
            seqs.append(ev["seq"])
            if server.dropped_subscribers:
                break
        assert server.dropped_subscribers == 1, f"not dropped after {i + 1} events"
        for _ in range(20):   # the normal one goes on
            assert server.publish("FILL", {"n": 1}) == 1
            seqs.append(next(stream)["seq"])
        assert seqs == list(range(len(seqs)))   # none lost, in order
        assert server.subscribers == 1
    slow.sock.settimeout(10)
    n = 0
    while slow.recv() is not None:   # what was buffered for it, then the end
        n += 1
    assert 0 < n < len(seqs)
    slow.close()


# -- the socket file -----------------------------------------------------------------------------------------------
def test_socket_file_is_0600_and_stop_unlinks_it(server):
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with TraderClient(server.path) as t:
        assert t.request("PING")["ok"]
        server.stop()
        with pytest.raises(TraderUnavailable):
            t.request("PING")
    assert not server.path.exists()
    with pytest.raises(TraderUnavailable, match="is the trader running"):
        TraderClient(server.path).request("PING")


def test_a_stale_socket_file_is_replaced_but_a_live_server_is_not(make_server, sockdir):
    path = sockdir / "trader.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))   # a crashed run: the file stays, nobody listens
    dead.close()
    with pytest.raises(TraderUnavailable, match="is the trader running"):
        TraderClient(path).request("PING")
    server = make_server(path=path)
    with TraderClient(path) as t:
        assert t.request("PING")["ok"]
    with pytest.raises(ServerAlreadyRunning, match="already answers"):
        CommandServer(path, FakeHandler(), run_id="second").start()
    with TraderClient(path) as t:
        assert t.request("PING")["ok"]   # the first one is untouched
    wait_for(lambda: server.clients == 0, 5, "the second server's probe to go")


def test_a_file_that_is_no_socket_is_not_replaced(sockdir):
    path = sockdir / "trader.sock"
    path.write_text("keep me")
    with pytest.raises(ServerAlreadyRunning, match="not a socket"):
        CommandServer(path, FakeHandler(), run_id="x").start()
    assert path.read_text() == "keep me"


def test_a_socket_path_too_long_is_refused_clearly():
    with pytest.raises(ValueError, match="107"):
        CommandServer(Path("/tmp") / ("x" * 120) / "trader.sock", FakeHandler(), run_id="x")


def test_a_full_house_of_silent_clients_cannot_keep_kill_out(make_server, monkeypatch):
    import procs.trading.server as srv
    monkeypatch.setattr(srv, "EVICT_IDLE_S", 0.05)
    s = make_server(max_clients=4)
    idle = [Raw(s.path) for _ in range(4)]
    wait_for(lambda: s.clients == 4, 5, "four clients")
    time.sleep(0.1)                                    # they have been silent longer than EVICT_IDLE_S
    with TraderClient(s.path) as c:
        assert c.request("KILL.SWITCH")["ok"]
    assert s.clients <= 4
    for r in idle:
        r.close()


def test_pipelined_commands_that_are_never_read_cost_bounded_memory(make_server):
    big = "x" * 100_000

    class Big(FakeHandler):
        def __call__(self, cmd):
            super().__call__(cmd)
            return {"blob": big} if cmd.type == "SNAPSHOT.GET" else {"pong": True}
    handler = Big()
    s = make_server(handler=handler)
    bomb = Raw(s.path)
    bomb.sock.sendall(b"".join(encode(cmd("SNAPSHOT.GET", seq=i)) for i in range(1, 401)))   # never read
    with TraderClient(s.path) as c:
        assert c.request("PING")["ok"]                # answered while the bomb's answers wait
    answered = handler.types().count("SNAPSHOT.GET")
    assert answered < 400                            # the rest waits until the bomb reads its answers
    [conn] = [x for x in s._conns.values() if x.pending]
    assert len(conn.wbuf) < 256 * 1024 + 200_000
    bomb.close()


def test_a_key_given_twice_is_refused_not_last_wins(server):
    r = Raw(server.path)
    body = b'{"v":1,"type":"PING","ts":0,"run_id":"x","symbol":null,"seq":1,"payload":{},"type":"KILL.SWITCH"}'
    r.send_body(body)
    ack = r.recv()
    assert error(ack) == "BAD_JSON" and "twice" in ack["error"]["message"]
    r.close()


def test_subscribers_and_tricklers_cannot_keep_kill_out_and_a_pipelined_kill_is_run(make_server, monkeypatch):
    import procs.trading.server as srv
    monkeypatch.setattr(srv, "EVICT_IDLE_S", 0.05)
    handler = FakeHandler()
    s = make_server(max_clients=3, handler=handler)
    subs = [Raw(s.path) for _ in range(3)]
    for r in subs:
        assert r.ask(cmd("EVENT.SUBSCRIBE", payload={"types": ["CONFIG.UPDATED"]}))["ok"]
    with TraderClient(s.path) as c:                  # a full house of subscribers: the oldest makes room
        assert c.request("PING")["ok"]
    trickle = Raw(s.path)
    trickle.sock.sendall(PREFIX.pack(MAX_FRAME - 1) + b" ")  # a frame that never completes, byte by byte
    for _ in range(3):
        time.sleep(0.03)
        trickle.sock.sendall(b" ")
    with TraderClient(s.path) as c:
        assert c.request("PING")["ok"]
    wait_for(lambda: s.clients <= 3, 5, "room")
    piped = Raw(s.path)
    piped.sock.sendall(b"".join(encode(cmd("ENGINE.STATUS", seq=i)) for i in range(1, 4))
                       + encode(cmd("KILL.SWITCH", seq=4)))
    wait_for(lambda: "KILL.SWITCH" in handler.types(), 5, "the pipelined kill to run")
    for r in (*subs, trickle, piped):
        r.close()
