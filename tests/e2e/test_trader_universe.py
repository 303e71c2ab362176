"""A market leaving the tradable top N, end to end: the trader sells its position, the fill comes
because the market stays subscribed while it is held (IN_UNIVERSE without TRADABLE), and the
timeline says why. The test plays the symbol manager (the single writer of ``symbols``)."""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest

from procs.trading.client import TraderClient
from shm.segment import unlink_instance
from shm.symbols import IN_UNIVERSE, TRADABLE, SymbolsTable
from tests.helpers import Env, get_json, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
TRADER = """
[trader]
arm_on_start = true
preset = "AGGRESSIVE"
[trader.strategy]
take_profit_pct = 50.0
stop_loss_pct = 20.0
exit_on_dead_cross = false
"""


@pytest.fixture
def running(tmp_path):
    inst = f"t{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp_path, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
    env.write_overlay(markets=MARKETS, speed=7200.0, tail=TRADER)
    symbols = SymbolsTable.writer(inst, 32)
    symbols.write([(m, IN_UNIVERSE | TRADABLE, i + 1, 1e9) for i, m in enumerate(MARKETS)])
    try:
        for p in ("exchange", "indicator", "trader"):
            env.start(p)
        wait_for(lambda: get_json(f"{env.base}/replay/status"), 30, "the replay exchange")
        env.start("ingest")
        sock = env.run_dir / "trader.sock"
        wait_for(sock.exists, 30, "the trader's socket")
        with TraderClient(sock) as client:
            yield env, symbols, client
    finally:
        env.stop_all()
        symbols.close()
        unlink_instance(inst)


def test_a_market_leaving_the_top_n_is_sold_as_the_timeline_says(running):
    env, symbols, client = running

    def held():
        got = client.request("POSITIONS.GET")["payload"]["positions"]
        return next((p["market"] for p in got if p["state"] == "open"), None)
    market = wait_for(held, 120, "a position", interval=0.2)
    symbols.write([(m, IN_UNIVERSE | (0 if m == market else TRADABLE), i + 1, 1e9) for i, m in enumerate(MARKETS)])
    wait_for(lambda: market not in {p["market"] for p in client.request("POSITIONS.GET")["payload"]["positions"]},
             60, f"{market}'s position to be sold", interval=0.2)
    timeline = client.request("TIMELINE.GET", {"n": 1000})["payload"]["timeline"]
    said = [e["text"] for e in timeline if e["market"] == market]
    assert any("for left_top_n" in t for t in said) and any("closed on left_top_n" in t for t in said), said[-5:]
    pnl = client.request("PNL.GET", {"by": "exit_reason"})["payload"]
    assert "left_top_n" in {r["key"] for r in pnl["rows"]}
