"""``smtm`` commands to the trader (procs.cli.trader) against an in-process command server with a fake
engine: exit codes, what reaches the engine, what is printed; and the engine line of ``smtm status``."""
from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from procs.cli import main
from procs.trading.protocol import CommandError
from procs.trading.server import CommandServer
from shm.trading import ARMED, RISK_DAILY_LOSS, TRADER_DTYPE, TraderTable
from tests.helpers import wait_for

T0 = 1729555200000   # 2024-10-22 00:00 UTC, in ms

POSITIONS = [
    {"market": "KRW-BTC", "qty": 0.0123, "avg_price": 154_000_000.0, "cost": 1_895_147.0, "tp": 161_700_000.0,
     "sl": 150_150_000.0, "last_price": 155_000_000.0, "unrealized": 12_345.0, "unrealized_pct": 0.65,
     "entry_tag": "macd_cross_rsi_bb", "opened_ms": T0, "exiting": False},
    {"market": "KRW-XRP", "qty": 1500.0, "avg_price": 812.5, "cost": 1_219_359.0, "tp": 853.0, "sl": 792.0,
     "last_price": 800.1, "unrealized": -19_210.0, "unrealized_pct": -1.58, "entry_tag": "macd_cross",
     "opened_ms": T0 + 1_800_000, "exiting": True},
]
ORDERS = [{"identifier": "run1-000002", "market": "KRW-XRP", "side": "ask", "ord_type": "market", "price": 0.0,
           "volume": 1500.0, "filled": 0.0, "avg_fill": 0.0, "fee": 0.0, "state": "submitted", "reason": "stop_loss",
           "created_ms": T0 + 3_600_000, "updated_ms": T0 + 3_600_000}]
PNL_ROWS = {"market": [{"key": "KRW-BTC", "trades": 3, "wins": 2, "realized": 45_000.0, "fees": 1_500.0},
                       {"key": "KRW-ETH", "trades": 2, "wins": 0, "realized": -30_000.0, "fees": 1_000.0}],
            "exit_reason": [{"key": "take_profit", "trades": 2, "wins": 2, "realized": 60_000.0, "fees": 900.0}]}


class FakeEngine:
    """Answers as the engine does (payload shapes of procs.trading.commands); LIVE.ARM is refused."""

    def __init__(self):
        self.seen = []

    def __call__(self, cmd):
        self.seen.append(cmd)
        t, p = cmd.type, cmd.payload
        if t == "LIVE.ARM":
            raise CommandError("REFUSED", "the kill switch is on: KILL.RESET first")
        if t in ("LIVE.DISARM", "KILL.RESET"):
            return {"mode": "DISARMED"}
        if t == "KILL.SWITCH":
            return {"mode": "KILLED", "cancelled": ["run1-000001", "run1-000002"]}
        if t == "POSITIONS.GET":
            return {"positions": POSITIONS}
        if t == "ORDERS.GET":
            return {"orders": ORDERS[:p["n"]]}
        if t == "PNL.GET":
            totals = {"realized": 15_000.0, "unrealized": -6_865.0, "fees": 2_500.0, "trades": 5, "wins": 2,
                      "losses": 3, "win_rate": 0.4, "equity": 10_008_135.0, "return_pct": 0.08,
                      "starting_cash": 10_000_000.0}
            return {"totals": totals, "by": p.get("by"), "rows": PNL_ROWS.get(p.get("by"), [])}
        if t == "TIMELINE.GET":
            return {"timeline": [{"wall_ns": 1, "market_ms": T0, "severity": "alert", "kind": "deny",
                                  "market": "KRW-SOL", "text": "daily loss limit reached"}]}
        if t == "SNAPSHOT.GET":
            return {"mode": "DISARMED", "market": cmd.symbol, "positions": POSITIONS[:1]}
        if t == "CONFIG.APPLY":
            return {"config_version": 4, "preset": p["preset"], "params": {"order_share": 0.15}}
        if t == "POSITION.EXIT":
            return {"orders": ["run1-000003"]}
        raise CommandError("INVALID", f"unexpected {t}")


@pytest.fixture
def trader_env(instance, monkeypatch):
    """The instance's environment for ``main()``: a short run dir (Unix socket paths are limited)."""
    run_base = Path(tempfile.mkdtemp(dir="/tmp", prefix="smtm"))
    for k, v in {"SMTM_INSTANCE": instance, "SMTM_RUN_DIR": str(run_base), "SMTM_PROFILE": "replay"}.items():
        monkeypatch.setenv(k, v)
    for k in ("SMTM_CONFIG", "FORCE_COLOR"):
        monkeypatch.delenv(k, raising=False)
    pipe = signal.getsignal(signal.SIGPIPE)
    yield run_base / instance
    signal.signal(signal.SIGPIPE, pipe)   # main() sets SIGPIPE to its default
    shutil.rmtree(run_base, ignore_errors=True)


@pytest.fixture
def engine(trader_env):
    fake = FakeEngine()
    server = CommandServer(trader_env / "trader.sock", fake, run_id="run1", log=logging.getLogger("test.cli"))
    server.start()
    fake.server = server
    yield fake
    server.stop()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_arm_refused_exits_1_with_the_engines_reason(engine, capsys):
    rc, out, err = run(capsys, "arm", "--reason", "morning session")
    assert rc == 1 and out == ""
    assert "REFUSED: the kill switch is on: KILL.RESET first" in err
    (cmd,) = engine.seen
    assert cmd.type == "LIVE.ARM" and cmd.payload == {"reason": "morning session"}


def test_disarm_and_kill(engine, capsys):
    assert run(capsys, "disarm")[:2] == (0, "mode DISARMED\n")
    rc, out, _ = run(capsys, "kill", "--reason", "panic")
    assert rc == 0 and "mode KILLED" in out and "cancelled 2 open order(s): run1-000001, run1-000002" in out
    assert run(capsys, "kill", "--reset")[0] == 0
    assert [(c.type, c.payload) for c in engine.seen] == [("LIVE.DISARM", {}), ("KILL.SWITCH", {"reason": "panic"}),
                                                          ("KILL.RESET", {})]


def test_positions_table(engine, capsys):
    rc, out, err = run(capsys, "positions")
    assert rc == 0 and err == ""
    assert "2 open position(s)" in out
    btc = next(line for line in out.splitlines() if "KRW-BTC" in line)
    for cell in ("0.0123", "154,000,000", "155,000,000", "1,895,147", "+12,345", "+0.65 %", "macd_cross_rsi_bb",
                 "2024-10-22 00:00"):
        assert cell in btc, (cell, btc)
    xrp = next(line for line in out.splitlines() if "KRW-XRP" in line)
    for cell in ("1,500", "812.5", "800.1", "-19,210", "-1.58 %", "2024-10-22 00:30", "exiting"):
        assert cell in xrp, (cell, xrp)
    assert "unrealized total -6,865 KRW" in out


@pytest.mark.parametrize("flag,sent", [("market", "market"), ("exit-reason", "exit_reason"), ("day", "day")])
def test_pnl_by(engine, capsys, flag, sent):
    rc, out, _ = run(capsys, "pnl", "--by", flag)
    assert rc == 0 and engine.seen[-1].payload == {"by": sent}
    assert "equity 10,008,135 KRW (started with 10,000,000, return +0.08 %)" in out
    assert "realized +15,000 KRW  unrealized -6,865 KRW  fees 2,500 KRW" in out
    assert "trades 5: 2 won, 3 lost, win rate 40.0 %" in out
    if flag == "market":
        btc = next(line for line in out.splitlines() if "KRW-BTC" in line)
        assert all(c in btc for c in ("3", "2", "66.7 %", "+45,000", "1,500"))
        eth = next(line for line in out.splitlines() if "KRW-ETH" in line)
        assert "-30,000" in eth and "0.0 %" in eth
    elif flag == "day":
        assert "no closed trades to group by day" in out


def test_pnl_totals_only(engine, capsys):
    rc, out, _ = run(capsys, "pnl")
    assert rc == 0 and engine.seen[-1].payload == {"by": None} and "win rate 40.0 %" in out


def test_orders_timeline_snapshot_preset_exit(engine, capsys):
    rc, out, _ = run(capsys, "orders", "-n", "5")
    assert rc == 0 and engine.seen[-1].payload == {"n": 5}
    row = next(line for line in out.splitlines() if "run1-000002" in line)
    assert all(c in row for c in ("2024-10-22 01:00", "KRW-XRP", "ask", "market", "1,500", "submitted", "stop_loss"))
    rc, out, _ = run(capsys, "timeline", "-n", "3")
    assert rc == 0 and engine.seen[-1].payload == {"n": 3}
    assert all(c in out for c in ("2024-10-22 00:00", "alert", "deny", "KRW-SOL", "daily loss limit reached"))
    rc, out, _ = run(capsys, "snapshot", "krw-btc")
    assert rc == 0 and engine.seen[-1].symbol == "KRW-BTC"
    assert json.loads(out) == {"mode": "DISARMED", "market": "KRW-BTC", "positions": POSITIONS[:1]}
    rc, out, _ = run(capsys, "preset", "balanced")
    assert rc == 0 and engine.seen[-1].payload == {"preset": "BALANCED"}
    assert "preset BALANCED applied (config version 4)" in out and "order_share=0.15" in out
    rc, out, _ = run(capsys, "exit", "all", "--reason", "end of day")
    assert rc == 0 and engine.seen[-1].payload == {"market": "all", "reason": "end of day"}
    assert "1 exit order(s): run1-000003" in out
    assert main(["preset", "YOLO"]) == 2


def test_events_prints_one_line_per_event(engine, capsys):
    server = engine.server

    def publish():
        wait_for(lambda: server.subscribers == 1, 10, "smtm events to subscribe")
        server.publish("ORDER.UPDATE", {"identifier": "run1-000004", "state": "done"}, symbol="KRW-ETH")
        server.publish("MODE.KILLED", {"reason": "panic"})

    th = threading.Thread(target=publish)
    th.start()
    rc, out, err = run(capsys, "events", "-n", "2")
    th.join(10)
    assert rc == 0 and "subscribed to every event" in err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "ORDER.UPDATE" in lines[0] and "KRW-ETH" in lines[0] and '"identifier":"run1-000004"' in lines[0]
    assert "MODE.KILLED" in lines[1] and "#1" in lines[1]


def test_trader_not_running(trader_env, capsys):
    for argv in (["arm"], ["positions"], ["pnl", "--by", "market"], ["events"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 1 and out == ""
        assert "is the trader running? `smtm status`" in err and str(trader_env / "trader.sock") in err


def test_status_prints_the_engine_line(trader_env, instance, capsys):
    rc, out, _ = run(capsys, "status")
    assert rc == 0 and "engine: not running" in out
    t = TraderTable.writer(instance, 1)
    row = np.zeros(1, TRADER_DTYPE)
    row[0]["mode"], row[0]["preset"], row[0]["config_version"] = ARMED, b"BALANCED", 3
    row[0]["equity"], row[0]["daily_pnl"], row[0]["drawdown_pct"] = 10_123_456.0, -12_345.0, 0.4
    row[0]["risk_flags"], row[0]["reason"] = RISK_DAILY_LOSS, b"daily loss limit"
    t.write_rows(slice(None), row)
    rc, out, _ = run(capsys, "status")
    t.close()
    assert rc == 0
    line = next(line for line in out.splitlines() if line.startswith("engine:"))
    assert line == ("engine: ARMED  preset BALANCED v3  equity 10,123,456 KRW  daily -12,345  drawdown 0.4 %  "
                    "risk daily_loss  (daily loss limit)")


def test_preset_apply_sends_a_backtests_parameters(engine, capsys, tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"preset": "SAFE", "params": {"take_profit_pct": 4.0},
                                                      "backtest": "20261123-sweep/point-007"}))
    rc, out, _ = run(capsys, "preset", "apply", str(tmp_path))
    assert rc == 0 and engine.seen[-1].payload == {
        "preset": "SAFE", "params": {"take_profit_pct": 4.0},
        "why": f"from backtest 20261123-sweep/point-007 ({tmp_path / 'params.json'})"}
    rc, _, _ = run(capsys, "preset", "apply", "aggressive")
    assert rc == 0 and engine.seen[-1].payload == {"preset": "AGGRESSIVE", "why": "smtm preset apply"}
    (tmp_path / "bad.json").write_text('{"preset": "YOLO"}')
    rc, _, err = run(capsys, "preset", "apply", str(tmp_path / "bad.json"))
    assert rc == 2 and "expected" in err
