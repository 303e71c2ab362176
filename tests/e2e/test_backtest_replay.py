"""A backtest books what the paper trader books in a full replay of the same window through the processes.

For two presets, a week of six bundled markets goes through exchange → ingest → indicator → symbols →
trader (armed, paper broker), and ``smtm backtest`` runs the same window with the same configuration (the
same overlay): the two ledgers hold the same orders, fills, positions (P&L), account, and every buy and
sell evaluation with its indicator values — equal to the last bit. Only what cannot be the same is left
out: the run id inside order identifiers (compared by sequence number) and wall-clock columns.

The symbol manager ranks in market time on what the replay has sent, each time it polls (wall time); the
backtest ranks as soon as every market has traded. So the replay runs at 60x until the trader trades all six
markets — which must be before the first evaluated candle close (a minute of wall time at 60x; checked) for
the first evaluations to be the same — then as fast as its consumers keep up.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from procs.backtest.runner import day_s
from shm.segment import unlink_instance
from tests.helpers import ROOT, Env, replay_to_the_trader

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-DOGE", "KRW-ADA"]
START, END = "2024-11-01", "2024-11-08"
_ID = re.compile(r"smtm-[A-Za-z0-9]+-(\d+)")

QUERIES = {
    "orders": "SELECT identifier, market, side, ord_type, price, volume,"
              " purpose, tag, position_id, state, reason, filled, filled_krw, fee, created_ms, updated_ms"
              " FROM orders ORDER BY rowid",
    "fills": "SELECT identifier, market, side, price, volume, fee, t_ms, trade_id,"
             " position_id FROM fills ORDER BY id",
    "positions": "SELECT id, market, state, qty, avg_price, cost, tp, sl, entry_tag, exit_reason, opened_ms,"
                 " closed_ms, bought_qty, buy_krw, sell_krw, fees, realized FROM positions ORDER BY id",
    "account": "SELECT cash, realized, fees FROM account",
    "buy_eval": "SELECT candle_t, market, rule, fired, decision, reason, close, macd, macd_signal, prev_macd,"
                " prev_signal, rsi, bb_lower, mode FROM buy_eval ORDER BY id",
    "sell_eval": "SELECT t_ms, market, position_id, trigger, price, tp, sl, macd, macd_signal, exit_reason, decision,"
                 " mode FROM sell_eval ORDER BY id",
}


def _ledger(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {k: [tuple(r) for r in db.execute(q)] for k, q in QUERIES.items()}
    finally:
        db.close()


def _seq(rows: list[tuple]) -> list[tuple]:
    """Order identifiers are ``smtm-<run id>-<sequence>`` (also inside reasons); the run id differs between the
    two runs, so each becomes its sequence number."""
    def one(v):
        return _ID.sub(r"order \1", v) if isinstance(v, str) else v
    return [tuple(one(v) for v in r) for r in rows]


@pytest.mark.parametrize("preset", ["BALANCED", "AGGRESSIVE"])
def test_a_backtest_equals_a_full_replay_through_the_processes(preset, tmp_path):
    inst = f"t{uuid.uuid4().hex[:10]}"
    run_base = Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp"))   # Unix socket paths are short
    env = Env(inst, tmp_path, run_base=run_base)
    env.write_overlay(markets=MARKETS, speed=60.0, exchange=f'start = "{START}"\nend = "{END}"',
                      shm="trades_capacity = 8192", tail=f"""
[trader]
preset = "{preset}"
arm_on_start = true
[symbols]
top_n = {len(MARKETS)}
""")
    try:
        client, trades, _ = replay_to_the_trader(env, tradable=MARKETS)
        health = client.request("ENGINE.STATUS")["payload"]["health"]
        client.close()
    finally:
        env.stop_all()      # the trader commits what is left and closes its ledger
        unlink_instance(inst)
    assert health["trades_missed"] == 0
    first_close_ms = (day_s(START) + 2 * 1800) * 1000   # the 3rd candle's first trade closes the 2nd: the 1st evaluated
    assert env.ranked_ms < first_close_ms, "the symbol manager ranked after the first candle close"
    out = tmp_path / "backtest"
    done = subprocess.run([sys.executable, "-m", "procs.cli", "backtest", "--preset", preset, "--markets",
                           ",".join(MARKETS), "--from", START, "--to", END, "--out", str(out)],
                          cwd=ROOT, env=env.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    replayed, backtest = _ledger(env.run_dir / "ledger.sqlite"), _ledger(out / "ledger.sqlite")
    assert len(backtest["orders"]) >= 20 and len(backtest["buy_eval"]) >= 100, {k: len(v) for k, v in backtest.items()}
    for table in QUERIES:
        a, b = replayed[table], backtest[table]
        a, b = _seq(a), _seq(b)
        assert len(a) == len(b), (table, len(a), len(b))
        bad = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert bad is None, (table, bad, a[bad], b[bad])
    print(f"{preset}: {trades} trades replayed; {len(backtest['orders'])} orders, {len(backtest['fills'])} fills, "
          f"{len(backtest['positions'])} positions, {len(backtest['buy_eval'])} buy evaluations equal "
          f"(the trader waited {health['read_waits']} times for a writer mid-write)")
