"""The ledger's migration to v2 (trade ids as text: Upbit's trade uuid) keeps every fill; a fill reported for
an order already cancelled is booked all the same, once; the broker choice reaches the trader's environment."""
from __future__ import annotations

import sqlite3

import pytest

from procs.trading.broker import BrokerEvent
from procs.trading.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger


def test_a_v1_ledger_is_migrated_with_its_fills(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for sql in MIGRATIONS[0][1]:
        db.execute(sql)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO orders (identifier, market, side, ord_type, price, volume, purpose, tag, position_id,"
               " state, created_ms, updated_ms, wall_ns) VALUES ('smtm-a-1', 'KRW-BTC', 'bid', 'price', 1e5, 0,"
               " 'entry', 't', 1, 'filled', 1, 1, 1)")
    db.execute("INSERT INTO fills (identifier, market, side, price, volume, fee, t_ms, trade_id, position_id)"
               " VALUES ('smtm-a-1', 'KRW-BTC', 'bid', 1e8, 0.001, 50, 5, 1234567, 1)")
    db.commit()
    db.close()
    lg = Ledger(path)
    assert lg.migrated_from == 1 and SCHEMA_VERSION == 2
    assert lg.fill_ids("smtm-a-1") == {"1234567"}
    assert [tuple(r) for r in lg.query("SELECT typeof(trade_id), price FROM fills")] == [("text", 1e8)]
    # the key still refuses the same trade twice, and takes an Upbit trade uuid
    assert not lg.insert_fill("smtm-a-1", "KRW-BTC", "bid", 1e8, 0.001, 50, 5, "1234567", 1)
    assert lg.insert_fill("smtm-a-1", "KRW-BTC", "bid", 1e8, 0.001, 50, 6, "9d1f7c9e-6b4e-5b1a-9a51-0c4b1f2e3d4c", 1)
    lg.close()


def test_a_fill_reported_after_the_cancel_is_still_booked_once(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    from procs.trading.portfolio import Position
    pid = e.ledger.new_position("KRW-BTC", 0, 0, "test", e.market_ms)
    e.positions["KRW-BTC"] = Position(pid, "KRW-BTC", "pending")
    o = e._order("KRW-BTC", "bid", "limit", 90e6, 0.01, "entry", "test", pid)
    e.cancel_order(o.identifier, "test")
    assert o.state.value == "cancelled" and "KRW-BTC" not in e.positions     # the position was given up (void)
    cash = e.cash
    late = BrokerEvent("fill", o.identifier, rig.t, 89.9e6, 0.004, 179.8, "late-trade-1")
    e._apply(late)
    e._apply(late)                                   # reported twice: booked once
    p = e.positions["KRW-BTC"]
    assert p.state == "open" and p.qty == pytest.approx(0.004)
    assert e.cash == pytest.approx(cash - 89.9e6 * 0.004 - 179.8)
    assert rig.rows(f"SELECT state, filled FROM orders WHERE identifier = '{o.identifier}'") == [("cancelled", 0.004)]
    assert rig.rows("SELECT count(*) FROM fills") == [(1,)]
    assert e.duplicate_fills == 1 and "late_fill" in [n["kind"] for n in e.recent]


def test_smtm_up_broker_upbit_on_replay_gets_the_replay_keys(monkeypatch):
    from procs.cli.supervisor import Supervisor
    from procs.runtime.loader import load_config
    monkeypatch.setenv("SMTM_BROKER", "upbit")
    monkeypatch.delenv("UPBIT_ACCESS_KEY", raising=False)
    cfg = load_config("replay")
    assert cfg.trader.broker == "upbit"
    env = Supervisor.env(None, cfg)
    assert env["SMTM_BROKER"] == "upbit" and env["UPBIT_ACCESS_KEY"] == cfg.exchange.access_key
    monkeypatch.setenv("SMTM_BROKER", "paper")
    assert "UPBIT_ACCESS_KEY" not in Supervisor.env(None, load_config("replay"))
