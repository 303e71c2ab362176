"""Ingest throughput: the 40 markets × 3 months of ``../shared/data/upbit/candles`` (KRW-BTC × 12 months; 1,035,702
trades) replayed at full speed (``speed = 0``: as fast as the consumers keep up) through exchange → ingest →
indicator, every one a live process on this machine's cores, timed from ingest's start until it has written the
last trade. CPU seconds of each process are read from /proc at the end.

Two runs: the replay profile as shipped (``ingest.format = "SIMPLE_LIST"``: the exchange puts the trades due at
one moment into one frame, at most 64, as Upbit does in its _LIST formats) and ``SIMPLE`` (one trade a frame,
the per-frame costs paid by every trade). Skipped without the shared data.
"""
from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest

from bench.conftest import RESULTS, SHARED_CANDLES, process_cpu_s, shared_data_dir, shared_markets
from procs.runtime.roster import STATUS_ROWS
from shm.segment import unlink_instance
from shm.status import StatusTable
from tests.helpers import Env, attach, get_json, wait_for

pytestmark = pytest.mark.skipif(not (SHARED_CANDLES / "minute30").is_dir(),
                                reason=f"no 40-market data at {SHARED_CANDLES}")
FORMATS = {"SIMPLE_LIST (the replay profile)": "SIMPLE_LIST", "SIMPLE (one trade a frame)": "SIMPLE"}


def _replay(tmp: Path, fmt: str) -> dict:
    d = shared_data_dir(tmp)
    markets = shared_markets()
    inst = f"b{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
    env.write_overlay(markets=markets, rows=64, capacity=8192, speed=0.0, exchange=f'data_dir = "{d}"',
                      extra=f'format = "{fmt}"')
    try:
        env.start("indicator")
        env.start("exchange")
        base = env.base
        wait_for(lambda: get_json(f"{base}/replay/status"), 60, "the exchange")
        t0 = time.monotonic()
        env.start("ingest")
        wait_for(lambda: (get_json(f"{base}/replay/status") or {}).get("finished"), 600, "the replay's end",
                 interval=0.1)
        status = get_json(f"{base}/replay/status")
        st = wait_for(lambda: attach(StatusTable.open, inst, STATUS_ROWS), 30, "the status table")
        wait_for(lambda: int(st.read("ingest")["msgs_in"]) >= status["frames_sent"], 60, "ingest to read every frame",
                 interval=0.01)
        wall = time.monotonic() - t0
        trades = int(st.read("ingest")["msgs_out"])
        cpu = {p.args[-1].split(".")[-1]: process_cpu_s(p.pid) for p in env.procs}
        return {"wall_s": wall, "trades": trades, "sent": status["messages_sent"], "frames": status["frames_sent"],
                "cpu_s": cpu}
    finally:
        env.stop_all()
        unlink_instance(inst)


@pytest.mark.parametrize("name", list(FORMATS))
def test_40_market_replay_through_ingest(benchmark, tmp_path, name):
    out = benchmark.pedantic(_replay, args=(tmp_path, FORMATS[name]), rounds=1, iterations=1)
    # every trade written, but those a REST repair covered (a price-band jump in the data makes ingest repair the
    # candle from REST: the few hundred trades held meanwhile are counted in the repaired candle instead)
    assert out["trades"] >= out["sent"] * 0.999, out
    RESULTS[f"40-market replay, {name}"] = {
        "group": "throughput", "label": f"40-market replay through exchange → ingest → indicator, {name}",
        "wall_s": out["wall_s"], "trades": out["trades"], "trades_per_s": out["trades"] / out["wall_s"],
        "frames": out["frames"], "cpu_s": out["cpu_s"]}
    benchmark.extra_info.update({k: out[k] for k in ("wall_s", "trades", "frames")})
