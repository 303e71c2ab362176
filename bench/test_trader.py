"""Trade → trader decision latency under the replay at full speed (the replay exchange at speed 0: as
fast as ingest keeps up), every process live except the monitor.

Measured inside the trader (:mod:`procs.trading.latency`), from the trade's arrival in ingest
(``recv_ns`` on the trade tape, CLOCK_MONOTONIC, system-wide) to

* **order at the broker** — every order the paper broker receives (take-profit / stop-loss triggered by
  a trade, entries and dead-cross exits on candle close);
* **candle-close decision** — every entry / exit evaluation, from the trade that closed the candle,
  through ingest → candles → indicator → trader.

Two runs: the replay at full speed over 30 days of the bundled 12 markets (≈ 100,000 trades, every
core saturated: the figures include queueing), and paced at 28,800x over 7 days (≈ 1,150 trades/s while replaying,
the cores not saturated). Also reported: the trade rate sustained and whether the trader missed any
trade (it must not).
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import RESULTS
from shm.segment import unlink_instance
from tests.helpers import Env, replay_to_the_trader

RUNS = {"full speed": (0.0, "2024-11-01", "2024-12-01"), "paced 28,800x": (28800.0, "2024-11-01", "2024-11-08")}
TRADER = "\n[trader]\narm_on_start = true\n[trader.strategy]\nrule = \"macd_cross\"\n"


def _run_replay(tmp: Path, speed: float, start: str, end: str) -> dict:
    inst = f"b{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
    env.write_overlay(speed=1800.0, exchange=f'start = "{start}"\nend = "{end}"', shm="trades_capacity = 16384",
                      tail=TRADER)
    try:   # ranked at 1800x (the symbol manager polls in wall time), then at the run's speed
        client, trades, wall = replay_to_the_trader(env, timeout=300, tradable=True, then_speed=speed)
        with client as c:
            st = c.request("ENGINE.STATUS")["payload"]
        return {"trades": trades, "wall_s": wall, "health": st["health"], "orders": st["health"]["latency_order"]}
    finally:
        env.stop_all()
        unlink_instance(inst)


@pytest.mark.parametrize("run", list(RUNS))
def test_trade_to_trader_decision_latency(benchmark, tmp_path, run):
    out = benchmark.pedantic(_run_replay, args=(tmp_path, *RUNS[run]), rounds=1, iterations=1)
    h = out["health"]
    assert h["trades_missed"] == 0
    rate = out["trades"] / out["wall_s"]
    for name, key in (("trade -> order at the broker", "latency_order"),
                      ("trade -> candle-close decision", "latency_decision")):
        lat = h[key]
        assert lat["n"] > 0, name
        RESULTS[f"{name}, {run}"] = {**{k: lat[k] for k in ("p50_us", "p99_us", "n", "max_us")}, "trades_per_s": rate,
                                     "group": "trader"}
    benchmark.extra_info.update({"trades": out["trades"], "trades_per_s": rate, **{
        f"{k}_{m}": h[k][m] for k in ("latency_order", "latency_decision") for m in ("p50_us", "p99_us", "n")}})
    assert np.isfinite(rate) and rate > 0
