"""Record and replay: a recording made by ingest during one replay run, served again by the
replay exchange at 10x, rebuilds byte-identical rings; the real WebSocket ticker recording
replays through the exchange and parses."""
import glob
import json
import os
import signal
import time
import uuid

import numpy as np
import websocket

from procs.market.tape import load_dataset
from procs.runtime.roster import STATUS_ROWS
from procs.upbit.parsing import parse_ticker
from shm.segment import unlink_instance
from shm.status import StatusTable
from shm.tables import CANDLES
from tests.helpers import ROOT, Env, attach, get_json, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]


def snapshot(instance):
    out = {}
    for tf in ("30m", "4h", "1d"):
        ring = CANDLES.open(instance, tf, 32, 2048)
        out[tf] = {m: ring.read_last(ring.row_of(m), 2048)[0] for m in MARKETS}
    return out


def run_until_done(env):
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    ingest = env.start("ingest")
    wait_for(lambda: (get_json(base + "/replay/status") or {}).get("finished"), 120, "the replay to finish",
             interval=0.2)
    sent = get_json(base + "/replay/status")["frames_sent"]
    st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 10, "status")
    wait_for(lambda: int(st.read("ingest")["msgs_in"]) >= sent, 30, "ingest to read every frame")
    return ingest


def test_recording_replayed_at_10x_rebuilds_identical_rings(env, tmp_path):
    rec_dir = tmp_path / "rec"
    env.write_overlay(markets=MARKETS, speed=86400.0, exchange='start = "2024-11-04"\nend = "2024-11-08"',
                      extra=f'record = true\nrecord_dir = "{rec_dir}"')
    env.start("exchange")
    t0 = time.monotonic()
    ingest = run_until_done(env)
    recorded_s = time.monotonic() - t0
    first = snapshot(env.instance)
    os.killpg(ingest.pid, signal.SIGTERM)
    assert ingest.wait(timeout=20) == 0
    files = sorted(glob.glob(str(rec_dir / "*.jsonl.gz")))
    assert files, "no recording written"
    src = load_dataset(ROOT / "data" / "upbit", MARKETS)
    lo, hi = 1730678400, 1731024000  # 2024-11-04 .. 2024-11-08 UTC
    for m in MARKETS:
        exp = src[m][(src[m]["t"] >= lo) & (src[m]["t"] < hi)]
        assert np.array_equal(first["30m"][m]["t"], exp["t"]) and np.array_equal(first["30m"][m]["c"], exp["c"]), m

    inst2 = f"t{uuid.uuid4().hex[:10]}"
    env2 = Env(inst2, tmp_path / "second")
    (tmp_path / "second").mkdir()
    try:
        env2.write_overlay(markets=MARKETS, speed=10.0, exchange=f'recording = "{rec_dir}/*.jsonl.gz"')
        env2.start("exchange")
        t1 = time.monotonic()
        run_until_done(env2)
        replay_s = time.monotonic() - t1
        second = snapshot(inst2)
        for tf in first:
            for m in MARKETS:
                assert first[tf][m].tobytes() == second[tf][m].tobytes(), (tf, m)
        print(f"\nrecorded run {recorded_s:.1f} s ({len(files)} file(s)); replay at 10x {replay_s:.1f} s; "
              f"rings identical in 30m/4h/1d for {len(MARKETS)} markets")
    finally:
        env2.stop_all()
        unlink_instance(inst2)


def test_real_ticker_recording_replays_and_parses(env):
    env.write_overlay(markets=["KRW-BTC"], speed=0.0,
                      exchange='recording = "data/upbit/ws/ticker_DEFAULT_2025-07-14T054646Z_124mkts.jsonl.gz"')
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    st = wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    codes = st["markets"]
    assert len(codes) == 124
    ws = websocket.create_connection(f"ws://127.0.0.1:{env.port}/websocket/v1", timeout=10)
    try:
        ws.send(json.dumps([{"ticket": "t"}, {"type": "ticker", "codes": codes}, {"format": "SIMPLE"}]))
        got = [json.loads(ws.recv()) for _ in range(456)]
    finally:
        ws.close()
    parsed = [parse_ticker(m) for m in got]
    assert all(p is not None for p in parsed) and all(m["ty"] == "ticker" for m in got)
    assert len({p.code for p in parsed}) == 124
