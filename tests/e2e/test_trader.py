"""The paper trader on the real data, as processes.

* A replay of ten days of the bundled 12 markets through exchange → ingest → indicator → symbols →
  trader (armed, paper broker): every position's quantity and P&L, and the cash, recomputed
  independently from the ledger's fills with pandas equal the trader's; no risk limit is ever
  exceeded; the timeline and the evaluations explain every order.
"""
from __future__ import annotations

import sqlite3
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shm.segment import unlink_instance
from shm.tables import TIMELINE, TIMELINE_ROW
from shm.trading import text
from tests.helpers import Env, replay_to_the_trader

TRADER = """
[trader]
arm_on_start = true
max_order_krw = 2000000.0
max_market_krw = 2000000.0
"""
SHM = "timeline_capacity = 16384\ntrades_capacity = 8192"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    inst = f"t{uuid.uuid4().hex[:10]}"
    run_base = Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp"))   # Unix socket paths are short
    env = Env(inst, tmp_path_factory.mktemp("trader"), run_base=run_base)
    env.write_overlay(speed=1800.0, exchange='start = "2024-11-01"\nend = "2024-11-11"', shm=SHM, tail=TRADER)
    try:
        client, _, _ = replay_to_the_trader(env, tradable=True)   # ranked at 1800x, then at full speed
        sock = env.run_dir / "trader.sock"
        yield env, client, sock
    finally:
        env.stop_all()
        unlink_instance(inst)


def _ledger(env: Env) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{env.run_dir / 'ledger.sqlite'}?mode=ro", uri=True)


def test_positions_and_cash_recomputed_from_fills(replayed):
    env, client, _ = replayed
    st = client.request("ENGINE.STATUS")["payload"]
    with _ledger(env) as db:
        fills = pd.read_sql("SELECT * FROM fills", db)
        pos = pd.read_sql("SELECT * FROM positions WHERE state IN ('open', 'closed')", db).set_index("id")
        orders = pd.read_sql("SELECT * FROM orders", db)
    assert st["health"]["trades_missed"] == 0
    assert len(orders) >= 10 and len(fills) >= 10 and (pos["state"] == "closed").sum() >= 5, (len(orders), len(pos))
    fills["krw"] = fills["price"] * fills["volume"]
    buys, sells = fills[fills["side"] == "bid"], fills[fills["side"] == "ask"]
    qty = buys.groupby("position_id")["volume"].sum().sub(sells.groupby("position_id")["volume"].sum(), fill_value=0)
    paid = (buys["krw"] + buys["fee"]).groupby(buys["position_id"]).sum()
    got = (sells["krw"] - sells["fee"]).groupby(sells["position_id"]).sum()
    for pid, p in pos.iterrows():
        if p["state"] == "closed":
            assert qty[pid] == pytest.approx(0.0, abs=p["bought_qty"] * 1e-9)
            assert p["realized"] == pytest.approx(got[pid] - paid[pid], rel=1e-9, abs=1e-6), pid
        else:
            assert p["qty"] == pytest.approx(qty[pid], rel=1e-9), pid
    cash = (10_000_000 - (buys["krw"] + buys["fee"]).sum() + (sells["krw"] - sells["fee"]).sum())
    assert st["cash"] == pytest.approx(cash, rel=1e-12)
    assert st["realized"] == pytest.approx(pos.loc[pos["state"] == "closed", "realized"].sum()
                                           + pos.loc[pos["state"] == "open", "realized"].sum(), rel=1e-9)
    live = {p["market"]: p for p in client.request("POSITIONS.GET")["payload"]["positions"]}
    assert set(live) == set(pos.loc[pos["state"] == "open", "market"])


def test_no_risk_limit_was_ever_exceeded(replayed):
    env, client, _ = replayed
    st = client.request("ENGINE.STATUS")["payload"]
    with _ledger(env) as db:
        orders = pd.read_sql("SELECT * FROM orders", db)
        fills = pd.read_sql("SELECT * FROM fills ORDER BY id", db)
    entries = orders[orders["purpose"] == "entry"]
    assert (entries["price"] >= 5000).all() and (entries["price"] <= 2_000_000 * (1 + 1e-9)).all()
    assert (orders[orders["purpose"] == "exit"]["volume"] > 0).all()
    # one open entry per market, and never more open positions than the preset allows
    held: dict[int, float] = {}
    markets: dict[int, str] = {}
    worst = 0
    for f in fills.itertuples():
        held[f.position_id] = held.get(f.position_id, 0.0) + (f.volume if f.side == "bid" else -f.volume)
        markets[f.position_id] = f.market
        open_ = [p for p, q in held.items() if q > 1e-12]
        assert len({markets[p] for p in open_}) == len(open_)
        worst = max(worst, len(open_))
    assert 1 <= worst <= st["params"]["max_positions"]
    # the daily loss and drawdown limits: a trip disarms; no order is created while disarmed by risk
    with _ledger(env) as db:
        trips = db.execute("SELECT market_ms FROM trade_audit WHERE action LIKE 'trip %'").fetchall()
    if trips:
        first = trips[0][0]
        assert not ((orders["created_ms"] > first) & (orders["purpose"] == "entry")).any()


def test_timeline_and_evaluations_explain_every_order(replayed):
    env, client, _ = replayed
    ring = TIMELINE.open(env.instance, None, 1, 16384)
    try:
        recs, _ = ring.read_last(ring.row_of(TIMELINE_ROW), 16384)
    finally:
        ring.close()
    lines = [text(r["text"]) for r in recs]
    with _ledger(env) as db:
        orders = db.execute("SELECT identifier, purpose, tag FROM orders").fetchall()
        bought = {r[0] for r in db.execute("SELECT reason FROM buy_eval WHERE decision = 'order'")}
        sold = {r[0] for r in db.execute("SELECT decision FROM sell_eval")}
        n_eval = db.execute("SELECT count(*) FROM buy_eval").fetchone()[0]
    assert n_eval > len(orders)        # evaluations not taken are recorded too
    for ident, purpose, tag in orders:
        assert any(ident in line and tag in line for line in lines), ident
        assert (ident in bought) if purpose == "entry" else (f"order {ident}" in sold), (ident, purpose, tag)
    entries = [r for r in recs if text(r["kind"]) == "fill"]
    assert entries and all(np.diff([int(r["wall_ns"]) for r in recs]) >= 0)


SEED_KEYS = ["snapshot_version", "ts", "run_id", "symbol", "tf", "config", "mode", "health", "market", "position",
             "risk", "candles", "indicators", "recent_orders", "recent_timeline"]


def test_snapshot_has_the_seed_keys_and_aligned_indicators(replayed):
    _, client, _ = replayed
    ack = client.request("SNAPSHOT.GET", {"count": 120}, symbol="KRW-BTC")
    assert ack["ok"], ack
    snap = ack["payload"]
    assert list(snap) == SEED_KEYS
    assert snap["symbol"] == "KRW-BTC" and snap["tf"] == "30m" and snap["mode"] in ("ARMED", "DISARMED")
    ts = [c["t"] for c in snap["candles"]]
    assert len(ts) == 120 and ts == sorted(ts) and len(snap["indicators"]) == len(ts)
    assert all(set(i) >= {"ema_fast", "rsi", "macd", "macd_signal", "bb_upper"} for i in snap["indicators"])
    assert all(v is None or isinstance(v, float) for i in snap["indicators"] for v in i.values())
    assert snap["recent_timeline"] and snap["recent_orders"]
    bad = client.request("SNAPSHOT.GET", {"tf": "7m"}, symbol="KRW-BTC")
    assert not bad["ok"] and bad["error"]["code"] == "INVALID"
