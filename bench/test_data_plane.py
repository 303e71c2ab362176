"""Data-plane benchmarks (pytest-benchmark). Ratios are against a peer measured in the same run.

* One-way wake latency writer → reader process of the 64-byte candle record (:data:`CANDLE_DTYPE`), one message
  every 200 µs, ``N_MSGS`` measured messages (``SMTM_BENCH_N``, default 5000), each transport on the machine as it
  is and with a CPU hog pinned to one of its cores (group ``wake``):

  - ring + the adaptive spin-then-park the processes use (:class:`shm.wake.PhasedWait`), ring + a fixed 200 µs
    spin then park, ring + plain semaphore wake (park at once);
  - pyzmq PUB/SUB over ``ipc://`` with the record's 64 raw bytes, and the same with the record as a JSON object
    (field name → value), encoded with **orjson** and decoded with orjson on receipt (the stamp is taken from the
    decoded object, after the decode);
  - ``multiprocessing.Queue`` (spawn context) carrying the record's 64 bytes (``put`` / ``get``, so one pickle of
    a ``bytes`` each way and the queue's feeder thread); its writer paces with a spin that lets the GIL go
    (:func:`_pace_yielding`), or the feeder thread would wait out the 5 ms switch interval behind the spin;
  - Redis Streams: ``XADD`` of the record's 64 bytes as one field of an entry, the reader blocked in
    ``XREAD BLOCK`` from the id it saw last (redis-py with the hiredis parser), against a ``redis-server`` the
    benchmark starts on a unix socket in a temporary directory (``--save "" --appendonly no``) and stops at the end
    (Debian's ``redis-server``; skipped when it is not installed).

  The writer takes a CLOCK_MONOTONIC ns stamp, then builds the record with it and the message's index and sends
  it, each transport in its own form (a tuple into the ring's struct-packed write, the record's bytes, a JSON
  object), so the latency includes each one's encoding and send; the reader subtracts on receipt (the clock is
  system-wide on Linux). The socket and queue transports first send ``WARMUP`` messages the reader
  does not count; every reader then counts exactly ``N_MSGS`` messages, in order, and fails on a lost one. Each
  entry keeps p50 / p99 / p99.9 / max and every sample (``samples_us``).
* A reader's copy of the last 200 candles out of the ring vs ``json.loads``, ``orjson.loads`` and ``pickle.loads``
  (pickle protocol 5) of the same 200 candles in Upbit's REST shape, a list of dicts (group ``snapshot``).
* CPU burnt by a consumer waiting on an idle ring: spin-then-park vs pure spinning (group ``idle_cpu``).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

from bench.conftest import RESULTS
from procs.runtime.roster import STATUS_ROWS
from procs.trading.latency import LatencyProbe
from shm.ring import record_struct
from shm.status import StatusRow, StatusTable
from shm.tables import CANDLE_DTYPE, CANDLES
from shm.wake import PhasedWait, SpinThenPark, Waker, open_semaphore

#: measured messages per transport and machine (after the warm-up); SMTM_BENCH_N=300 for a quick check
N_MSGS = int(os.environ.get("SMTM_BENCH_N", "5000"))
INTERVAL_S = 200e-6
WARMUP = 200
#: the longest a reader waits for its messages, and the writer for the reader's figures
READER_DEADLINE_S = 60.0 + 20 * N_MSGS * INTERVAL_S


def _pace(t_next: float) -> None:
    while time.perf_counter() < t_next:
        pass


def _pace_yielding(t_next: float) -> None:
    """:func:`_pace` that lets the GIL go on each turn (``time.sleep(0)``), for a transport with a Python thread of
    its own in the writer (``multiprocessing.Queue``'s feeder): under a pure Python spin that thread waits for the
    interpreter's 5 ms switch interval, and the figure would measure that (about 3 ms p50) instead of the queue."""
    while time.perf_counter() < t_next:
        time.sleep(0)


#: the candle record as bytes (:data:`CANDLE_DTYPE`'s layout), for the transports that carry raw bytes
RECORD = record_struct(CANDLE_DTYPE)      # the ring's own packing of the record: the same bytes


def _candle(t: int, i: int) -> tuple:
    """The record as a tuple in :data:`CANDLE_DTYPE` field order: ``t`` the writer's stamp, ``n`` the index."""
    return (t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, i, 0)


def _send_paced(send, pace=_pace) -> None:
    """``N_MSGS`` records, one every ``INTERVAL_S``: ``send(t, i)`` gets the CLOCK_MONOTONIC ns stamp taken just
    before (the record's ``t``; the reader subtracts on receipt) and the index (``n``), and builds its transport's
    message from :func:`_candle` — a tuple for the ring's :meth:`~shm.ring.RingTable.write`, :data:`RECORD` bytes
    or a JSON object for the others — so each pays for its own encoding."""
    t_next = time.perf_counter()
    for i in range(N_MSGS):
        t_next += INTERVAL_S
        pace(t_next)
        send(time.perf_counter_ns(), i)


# -- ring transports -------------------------------------------------------------------------
def _waiter(instance, row, strategy, spin_us, park_timeout_s):
    cls = PhasedWait if strategy == "phased" else SpinThenPark
    return cls(open_semaphore(instance, "indicator"), row, spin_us=spin_us, park_timeout_s=park_timeout_s)


def _ring_reader(instance, strategy, spin_us, n, ready, out):
    st = StatusTable.writer(instance, STATUS_ROWS)
    row = StatusRow(st, "indicator")
    ring = CANDLES.open(instance, "30m", 2, 1024)
    waiter = _waiter(instance, row, strategy, spin_us, 0.5)
    lat = np.empty(n, np.int64)
    seen = ring.global_seq
    idx = ring.count(0)
    got = 0
    ready.set()
    while got < n:
        if not waiter.wait(lambda: ring.global_seq != seen):  # noqa: B023 - called at once, with the current seen
            continue
        now = time.perf_counter_ns()
        seen = ring.global_seq
        recs, idx_new = ring.read_range(0, idx)  # every record since the last wake, none skipped
        idx = idx_new
        for t in recs["t"][: n - got]:
            lat[got] = now - int(t)
            got += 1
    if os.environ.get("SMTM_WAIT_STATS"):
        print({k: getattr(waiter, k, None) for k in ("parks", "wakeups", "spin_hits", "preemptions", "budget_ns",
                                                    "backoff_ns", "mean_wait_ns")}, flush=True)
    out.put(lat)


def _ring_latency(instance, spin_us, strategy="spin"):
    ctx = mp.get_context("spawn")
    ring = CANDLES.create(instance, "30m", 2, 1024)
    ring.assign_row("KRW-BTC")
    st = StatusTable.writer(instance, STATUS_ROWS)
    waker = Waker(instance, st, ["indicator"])
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_ring_reader, args=(instance, strategy, spin_us, N_MSGS, ready, out), daemon=True)
    p.start()
    try:
        assert ready.wait(30)
        time.sleep(0.2)
        def send(t, i):
            ring.write(0, ring.count(0), _candle(t, i))
            ring.publish()
            waker.wake()
        _send_paced(send)
        lat = out.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return lat


# -- ZeroMQ ------------------------------------------------------------------------------------
def _zmq_reader(addr, n, ready, out):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(addr)
    ready.set()
    lat = np.empty(n, np.int64)
    got = 0
    while got < n:
        msg = s.recv()
        now = time.perf_counter_ns()
        rec = np.frombuffer(msg, CANDLE_DTYPE)[0]
        if int(rec["n"]) >= 0:
            lat[got] = now - int(rec["t"])
            got += 1
    out.put(lat)
    s.close(0)
    ctx.term()


def _zmq_latency():
    import zmq
    ctx_mp = mp.get_context("spawn")
    addr = f"ipc://{tempfile.gettempdir()}/smtm-bench-{os.getpid()}.ipc"
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.bind(addr)
    ready, out = ctx_mp.Event(), ctx_mp.Queue()
    p = ctx_mp.Process(target=_zmq_reader, args=(addr, N_MSGS, ready, out), daemon=True)
    p.start()
    try:
        assert ready.wait(30)
        for _ in range(WARMUP):  # the slow-joiner: let the subscription settle
            pub.send(RECORD.pack(*_candle(time.perf_counter_ns(), -1)))
            time.sleep(0.001)
        _send_paced(lambda t, i: pub.send(RECORD.pack(*_candle(t, i))))
        lat = out.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
        pub.close(0)
        zctx.term()
    return lat


# -- the other peers: JSON over ZeroMQ, multiprocessing.Queue, Redis Streams ---------------------
class _Tally:
    """The reader's side of a peer: latency of each measured message, in order, none lost (warm-up ones,
    ``n < 0``, are not counted)."""

    def __init__(self, n: int):
        self.lat = np.empty(n, np.int64)
        self.got = 0
        self.deadline = time.monotonic() + READER_DEADLINE_S

    def add(self, now: int, t: int, i: int) -> None:
        if i < 0:
            return
        if i != self.got:
            raise RuntimeError(f"message {self.got} expected, message {i} came: lost or out of order")
        self.lat[self.got] = now - t
        self.got += 1

    @property
    def done(self) -> bool:
        if self.got >= len(self.lat):
            return True
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"{self.got} of {len(self.lat)} messages in {READER_DEADLINE_S:.0f} s")
        return False


def _peer_reader(kind, args, n, ready, out):
    """Runs the reader of one peer in the spawned process; puts ``("ok", latencies)`` or ``("error", text)``."""
    try:
        out.put(("ok", _PEER_READERS[kind](*args, _Tally(n), ready)))
    except Exception as e:  # reported to the writer, which fails the test with it
        out.put(("error", f"{type(e).__name__}: {e}"))


def _zmq_json_reader(addr, tally, ready):
    import orjson
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.setsockopt(zmq.RCVTIMEO, 1000)
    s.connect(addr)
    ready.set()
    try:
        while not tally.done:
            try:
                msg = s.recv()
            except zmq.Again:
                continue
            d = orjson.loads(msg)
            now = time.perf_counter_ns()
            tally.add(now, d["t"], d["n"])
    finally:
        s.close(0)
        ctx.term()
    return tally.lat


def _queue_reader(q, tally, ready):
    ready.set()
    while not tally.done:
        try:
            msg = q.get(timeout=1.0)
        except queue.Empty:
            continue
        now = time.perf_counter_ns()
        rec = np.frombuffer(msg, CANDLE_DTYPE)[0]
        tally.add(now, int(rec["t"]), int(rec["n"]))
    return tally.lat


def _redis_reader(sock, stream, tally, ready):
    import redis
    r = redis.Redis(unix_socket_path=sock, socket_timeout=10, socket_connect_timeout=5)
    r.ping()
    ready.set()
    last = b"0-0"  # from the stream's start: an entry added before the first XREAD is not missed
    try:
        while not tally.done:
            reply = r.xread({stream: last}, block=1000)
            now = time.perf_counter_ns()
            for _, entries in reply or ():
                for eid, fields in entries:
                    rec = np.frombuffer(fields[b"rec"], CANDLE_DTYPE)[0]
                    tally.add(now, int(rec["t"]), int(rec["n"]))
                    last = eid
    finally:
        r.close()
    return tally.lat


_PEER_READERS = {"zmq-json": _zmq_json_reader, "mpqueue": _queue_reader, "redis": _redis_reader}


def _reader_failed(p, out, kind):
    """The error a reader that exited early reported (or its exit code): its figures never come."""
    try:
        status, res = out.get(timeout=2)
    except queue.Empty:
        return f"{kind} reader exited ({p.exitcode}) without a word"
    return f"{kind} reader: {res}" if status != "ok" else None


def _peer_latency(kind, reader_args, send, ctx=None, pace=_pace):
    """Starts the reader of ``kind`` in a spawned process, sends ``WARMUP`` unmeasured records 1 ms apart (a
    subscription settles, connections and code warm up), then ``N_MSGS`` paced ones with ``send``; returns the
    reader's latencies (ns). Every wait is bounded, and the reader is killed if it outlives the test."""
    ctx = ctx or mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_peer_reader, args=(kind, reader_args, N_MSGS, ready, out), daemon=True)
    p.start()
    try:
        deadline = time.monotonic() + 30
        while not ready.wait(0.2):
            if not p.is_alive():
                raise AssertionError(_reader_failed(p, out, kind))
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} reader not ready in 30 s")
        for _ in range(WARMUP):
            send(time.perf_counter_ns(), -1)
            time.sleep(0.001)
        _send_paced(send, pace)
        deadline = time.monotonic() + READER_DEADLINE_S + 10
        while True:
            try:
                status, res = out.get(timeout=0.5)
                break
            except queue.Empty:
                if not p.is_alive():
                    try:  # it may have put its figures just before exiting
                        status, res = out.get(timeout=2)
                        break
                    except queue.Empty:
                        raise AssertionError(f"{kind} reader exited ({p.exitcode}) without its figures") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"{kind} reader gave no figures in {READER_DEADLINE_S + 10:.0f} s") from None
        assert status == "ok", f"{kind} reader: {res}"
        assert len(res) == N_MSGS, f"{kind} reader measured {len(res)} messages, not {N_MSGS}"
        return res
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=10)
        out.cancel_join_thread()
        out.close()


def _zmq_json_latency():
    import orjson
    import zmq
    names = CANDLE_DTYPE.names
    addr = f"ipc://{tempfile.gettempdir()}/smtm-bench-{os.getpid()}-json.ipc"
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.bind(addr)
    try:
        return _peer_latency("zmq-json", (addr,), lambda t, i: pub.send(orjson.dumps(dict(zip(names, _candle(t, i))))))
    finally:
        pub.close(0)
        zctx.term()


def _queue_latency():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    try:
        return _peer_latency("mpqueue", (q,), lambda t, i: q.put(RECORD.pack(*_candle(t, i))), ctx, _pace_yielding)
    finally:
        q.cancel_join_thread()  # a reader that died leaves the pipe unread: never block on the feeder thread
        q.close()


def _redis_latency(sock):
    import redis
    r = redis.Redis(unix_socket_path=sock, socket_timeout=10, socket_connect_timeout=5)
    stream = f"smtm-bench-{uuid.uuid4().hex[:10]}"
    try:
        return _peer_latency("redis", (sock, stream), lambda t, i: r.xadd(stream, {"rec": RECORD.pack(*_candle(t, i))}))
    finally:
        try:
            r.delete(stream)
        finally:
            r.close()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The redis-server is sent SIGTERM if the benchmark process dies without its teardown (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def redis_server():
    """A private ``redis-server`` on a unix socket in a temporary directory, no persistence; yields the socket's
    path, and stops the server and removes the directory at the end, whatever happened."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed: Debian's redis-server package (`make bench` installs it as root)")
    redis = pytest.importorskip("redis", reason="redis-py is not installed (requirements-dev.txt)")
    tmp = tempfile.mkdtemp(prefix="smtm-redis-")
    sock = os.path.join(tmp, "redis.sock")
    log_path = os.path.join(tmp, "redis.log")
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                                     "--save", "", "--appendonly", "no", "--dir", tmp, "--logfile", ""],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_set_pdeathsig)
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                with open(log_path, errors="replace") as f:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}: {f.read()[-2000:]}")
            try:
                c = redis.Redis(unix_socket_path=sock, socket_timeout=1, socket_connect_timeout=1)
                try:
                    if c.ping():
                        break
                finally:
                    c.close()
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 15 s")
            time.sleep(0.05)
        yield sock
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _record(name, lat_ns, benchmark):
    us = np.asarray(lat_ns, np.float64) / 1000.0
    res = LatencyProbe.summary(us)
    benchmark.extra_info.update(res)  # scalars only: pytest-benchmark writes extra_info as JSON
    RESULTS[name] = {"group": "wake", **res, "samples_us": us}


#: the machine a wake-up latency is measured on: as it is, or with a CPU hog (a busy Python process) pinned to its
#: first core — the state in which a fixed spin budget loses to parking (issue #11)
MACHINES = ("quiet", "CPU hog on one core")
TRANSPORTS = (("ring, adaptive spin-then-park", "phased", 200.0), ("ring, fixed 200 us spin-then-park", "spin", 200.0),
              ("ring, semaphore wake", "spin", 0.0), ("pyzmq PUB/SUB ipc://", "zmq", None),
              ("pyzmq PUB/SUB ipc://, JSON", "zmq-json", None), ("multiprocessing.Queue", "mpqueue", None),
              ("Redis Streams", "redis", None))


@pytest.fixture(params=MACHINES)
def machine(request):
    """The machine state for the test: nothing, or a CPU hog on core 0 for its duration."""
    hog = None
    if request.param != "quiet":
        hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
    try:
        yield request.param
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


@pytest.mark.parametrize("name, strategy, spin_us", TRANSPORTS)
def test_wake_latency(benchmark, request, instance, machine, name, strategy, spin_us):
    if strategy == "zmq":
        pytest.importorskip("zmq")
        lat = benchmark.pedantic(_zmq_latency, rounds=1, iterations=1)
    elif strategy == "zmq-json":
        pytest.importorskip("zmq")
        pytest.importorskip("orjson")
        lat = benchmark.pedantic(_zmq_json_latency, rounds=1, iterations=1)
    elif strategy == "mpqueue":
        lat = benchmark.pedantic(_queue_latency, rounds=1, iterations=1)
    elif strategy == "redis":
        sock = request.getfixturevalue("redis_server")  # skips here when redis-server is not installed
        lat = benchmark.pedantic(_redis_latency, args=(sock,), rounds=1, iterations=1)
    else:
        lat = benchmark.pedantic(_ring_latency, args=(instance, spin_us, strategy), rounds=1, iterations=1)
    _record(f"{name} [{machine}]", lat, benchmark)
    RESULTS[f"{name} [{machine}]"]["load1"] = os.getloadavg()[0]


# -- snapshot copy vs JSON -----------------------------------------------------------------------
def _candles_200(instance):
    from procs.market.tape import load_dataset
    from tests.helpers import ROOT
    src = load_dataset(ROOT / "data" / "upbit", ["KRW-BTC"])["KRW-BTC"][-200:]
    ring = CANDLES.create(instance, "30m", 2, 1024)
    row = ring.assign_row("KRW-BTC")
    rec = np.zeros(len(src), CANDLE_DTYPE)
    for f in ("t", "o", "h", "l", "c", "v", "value"):
        rec[f] = src[f]
    ring.write_many(row, 0, rec)
    ring.publish()
    doc = [{"market": "KRW-BTC", "candle_date_time_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(r["t"]))),
            "opening_price": float(r["o"]), "high_price": float(r["h"]), "low_price": float(r["l"]),
            "trade_price": float(r["c"]), "candle_acc_trade_volume": float(r["v"]),
            "candle_acc_trade_price": float(r["value"]), "timestamp": int(r["t"]) * 1000, "unit": 30} for r in rec]
    return CANDLES.open(instance, "30m", 2, 1024), row, json.dumps(doc)


def _snapshot(key, label, benchmark, **extra):
    RESULTS[key] = {"group": "snapshot", "label": label, "median_us": benchmark.stats.stats.median * 1e6, **extra}


def test_snapshot_copy_200(benchmark, instance):
    ring, row, _ = _candles_200(instance)
    recs, _ = benchmark(ring.read_last, row, 200)
    assert len(recs) == 200
    _snapshot("copy", "ring copy (read_last)", benchmark, bytes=int(recs.nbytes))


def test_snapshot_json_loads_200(benchmark, instance):
    _, _, payload = _candles_200(instance)
    doc = benchmark(json.loads, payload)
    assert len(doc) == 200
    _snapshot("json", "json.loads", benchmark, bytes=len(payload.encode()))


def test_snapshot_orjson_loads_200(benchmark, instance):
    orjson = pytest.importorskip("orjson")
    _, _, payload = _candles_200(instance)
    doc = benchmark(orjson.loads, payload)  # the same str json.loads gets
    assert doc == json.loads(payload)
    _snapshot("orjson", "orjson.loads", benchmark, bytes=len(payload.encode()))


#: the pickle protocol of the pickle peer (5, Python 3.8+'s highest, the one a Python peer would pick)
PICKLE_PROTOCOL = 5


def test_snapshot_pickle_loads_200(benchmark, instance):
    _, _, payload = _candles_200(instance)
    blob = pickle.dumps(json.loads(payload), protocol=PICKLE_PROTOCOL)  # the same list of 200 dicts
    doc = benchmark(pickle.loads, blob)
    assert doc == json.loads(payload)
    _snapshot("pickle", f"pickle.loads (protocol {PICKLE_PROTOCOL})", benchmark, bytes=len(blob))


# -- idle CPU ---------------------------------------------------------------------------------------
def _idle_consumer(instance, strategy, spin_us, seconds, out):
    st = StatusTable.writer(instance, STATUS_ROWS)
    row = StatusRow(st, "indicator")
    ring = CANDLES.open(instance, "30m", 2, 1024)
    waiter = _waiter(instance, row, strategy, spin_us or 0.0, 0.25)
    seen = ring.global_seq
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if spin_us is None:  # pure spinning: never parks
            _ = ring.global_seq != seen
        else:
            waiter.wait(lambda: ring.global_seq != seen)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out.put(100.0 * cpu / (time.perf_counter() - t0))


@pytest.mark.parametrize("name, strategy, spin_us", [("adaptive spin-then-park (up to 200 us)", "phased", 200.0),
                                                     ("fixed 200 us spin-then-park", "spin", 200.0),
                                                     ("pure spin (never parks)", "spin", None)])
def test_idle_consumer_cpu(benchmark, instance, name, strategy, spin_us):
    CANDLES.create(instance, "30m", 2, 1024).assign_row("KRW-BTC")
    ctx = mp.get_context("spawn")

    def run():
        out = ctx.Queue()
        p = ctx.Process(target=_idle_consumer, args=(instance, strategy, spin_us, 2.0, out), daemon=True)
        p.start()
        pct = out.get(timeout=60)
        p.join(timeout=10)
        return pct

    pct = benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS[name] = {"group": "idle_cpu", "cpu_pct": pct}
    benchmark.extra_info["cpu_pct"] = pct
