"""The backtest runs the trader's own engine: it books what the engine fed trade by trade books (the lockstep
session of the broker tests), twice the same; its metrics equal an independent pandas computation from the
trades and equity CSVs it writes; ``smtm backtest`` prints the report and refuses a bad ``--set``."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from procs.backtest import metrics as M
from procs.backtest.runner import BacktestSpec, day_s, run_backtest
from procs.runtime.config import SymbolsConfig, TraderConfig
from tests.helpers import DATA, ROOT

MARKETS = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")
CHURN = {"preset": "AGGRESSIVE", "arm_on_start": True,
         "strategy": {"rule": "macd_above", "take_profit_pct": 0.5, "stop_loss_pct": 0.5, "daily_loss_pct": 50.0,
                      "max_positions": 4, "order_share": 0.2}, "max_drawdown_pct": 50.0}


def _spec(**kw) -> BacktestSpec:
    return BacktestSpec(MARKETS, DATA, day_s("2024-11-01"), day_s("2024-11-04"), **kw)


def _rows(path, sql):
    db = sqlite3.connect(path)
    out = [tuple(r) for r in db.execute(sql)]
    db.close()
    return out


LEDGER = ("SELECT market, side, ord_type, price, volume, purpose, tag, state, filled, filled_krw, fee FROM orders"
          " ORDER BY rowid")


def test_the_backtest_books_what_the_engine_books_trade_by_trade(tmp_path):
    """The lockstep session of the broker tests feeds the same engine the same way (every trade, then the
    close it makes): the backtest's ledger is that ledger, and two runs are the same."""
    from procs.trading.broker import PaperBroker
    from procs.trading.fills import FillModel
    from tests.helpers import ExchangeThread
    from tests.trading.test_upbit_broker import Session, config
    cfg = config()
    ex = ExchangeThread(list(MARKETS), "2024-11-01", "2024-11-04")
    try:
        s = Session(tmp_path / "session.sqlite", PaperBroker(FillModel(cfg.fee_rate, cfg.slippage_pct)), cfg, ex)
        while s.step(through_exchange=False):
            pass
        s.engine.flush()
    finally:
        ex.close()
    everyone = SymbolsConfig(top_n=len(MARKETS))
    a = run_backtest(_spec(), cfg, tmp_path / "a", symbols=everyone)
    b = run_backtest(_spec(), cfg, tmp_path / "b", symbols=everyone)
    want = _rows(tmp_path / "session.sqlite", LEDGER)
    assert len(want) > 50
    assert _rows(a.ledger_path, LEDGER) == want
    assert _rows(a.ledger_path, "SELECT * FROM fills") == _rows(b.ledger_path, "SELECT * FROM fills")
    assert _rows(a.ledger_path, "SELECT cash, realized, fees FROM account") == \
        _rows(tmp_path / "session.sqlite", "SELECT cash, realized, fees FROM account")


def test_metrics_equal_an_independent_pandas_computation(tmp_path):
    cfg = TraderConfig.model_validate(CHURN)
    r = run_backtest(_spec(), cfg, tmp_path / "bt")
    m = M.compute(r)
    M.write_files(r, m)
    trades = pd.read_csv(tmp_path / "bt" / "trades.csv")
    eq = pd.read_csv(tmp_path / "bt" / "equity.csv")
    saved = json.loads((tmp_path / "bt" / "metrics.json").read_text())
    assert len(trades) == m["trades"] == saved["trades"] > 20
    assert m["win_rate_pct"] == pytest.approx((trades.realized > 0).mean() * 100)
    wins, losses = trades.realized[trades.realized > 0].sum(), -trades.realized[trades.realized < 0].sum()
    assert m["profit_factor"] == pytest.approx(wins / losses)
    assert m["avg_hold_h"] == pytest.approx(((trades.closed_ms - trades.opened_ms) / 3.6e6).mean())
    e = eq.equity.to_numpy()
    assert m["max_drawdown_pct"] == pytest.approx(((np.maximum.accumulate(e) - e) / np.maximum.accumulate(e)).max()
                                                  * 100)
    assert m["net_pnl"] == pytest.approx(e[-1] - 10_000_000)
    daily = eq.assign(day=pd.to_datetime(eq.t, unit="s").dt.floor("D")).groupby("day").equity.last()
    rets = pd.concat([pd.Series([e[0]]), daily.reset_index(drop=True)]).pct_change().dropna()
    assert m["sharpe"] == pytest.approx(rets.mean() / rets.std() * math.sqrt(365))
    assert m["sortino"] == pytest.approx(rets.mean() / np.sqrt((rets.clip(upper=0) ** 2).mean()) * math.sqrt(365))
    assert m["exposure_pct"] == pytest.approx((eq.invested > 0).mean() * 100)
    assert m["fees"] == pytest.approx(_rows(r.ledger_path, "SELECT fees FROM account")[0][0])
    # realized per trade adds up to the ledger's: sell - buy - fees of each closed position
    assert trades.realized.to_numpy() == pytest.approx((trades.sell_krw - trades.buy_krw - trades.fees).to_numpy())


def test_smtm_backtest_prints_the_report_and_refuses_a_bad_key(tmp_path):
    run = [sys.executable, "-m", "procs.cli", "backtest", "--markets", "KRW-BTC,KRW-ETH", "--from", "2024-11-01",
           "--to", "2024-11-08", "--preset", "safe", "--set", "take_profit_pct=4", "--out", str(tmp_path / "o")]
    p = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for text in ("preset SAFE", "net P&L", "per market", "per exit reason", "per month", "written to"):
        assert text in p.stdout
    assert {f.name for f in (tmp_path / "o").iterdir()} >= {"ledger.sqlite", "trades.csv", "equity.csv",
                                                            "metrics.json"}
    bad = subprocess.run(run[:-2] + ["--set", "take_profit_pct=-1", "--out", str(tmp_path / "p")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "take_profit_pct" in bad.stderr
    nokey = subprocess.run(run[:-2] + ["--set", "bogus=1", "--out", str(tmp_path / "q")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert nokey.returncode == 2 and "bogus" in nokey.stderr


def test_the_html_report_renders_in_a_headless_browser(tmp_path):
    """The report opens in Debian's chromium (selenium, headless) with every plot drawn and the metric table."""
    from procs.backtest import report
    from tests.helpers import headless_chromium
    cfg = TraderConfig.model_validate(CHURN)
    r = run_backtest(_spec(), cfg, tmp_path / "bt")
    m = M.compute(r)
    page = report.write(r, m, "Backtest: test", "4 markets, 3 days")
    browser = headless_chromium((1280, 2000))
    try:
        browser.get(page.as_uri())
        assert browser.title == "Backtest: test"
        drawn = browser.execute_script(
            "return Array.from(document.images).map(i => [i.id, i.complete && i.naturalWidth, i.naturalHeight])")
        assert {d[0] for d in drawn} == {"equity", "drawdown", "monthly", "markets", "chart"}
        assert all(w > 500 and h > 150 for _, w, h in drawn), drawn
        text = browser.find_element("tag name", "body").text
        for label in ("net P&L", "max drawdown", "Sharpe", "profit factor", "Per market", "Per exit reason"):
            assert label in text
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()


def test_compare_sweep_and_a_backtest_applied_to_the_engine(tmp_path):
    """--compare and --sweep (with an out-of-sample split) write their pages; a point's params.json applied with
    CONFIG.APPLY lands in the engine and its trade_audit names the backtest."""
    base = [sys.executable, "-m", "procs.cli", "backtest", "--markets", "KRW-BTC,KRW-ETH", "--from", "2024-11-01",
            "--to", "2024-11-15", "--processes", "2"]
    p = subprocess.run(base + ["--compare", "SAFE,AGGRESSIVE", "--out", str(tmp_path / "c")], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "SAFE" in p.stdout and "AGGRESSIVE" in p.stdout and (tmp_path / "c" / "compare.html").exists()
    p = subprocess.run(base + ["--sweep", "tp=1:2:1", "--sweep", "sl=0.5:1:0.5", "--split", "0.5", "--out",
                               str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "4 points" in p.stdout and "return out" in p.stdout
    page = (tmp_path / "s" / "sweep.html").read_text()
    assert "heatmap-in" in page and "heatmap-out" in page
    params = sorted((tmp_path / "s").glob("point-*-in/params.json"))
    assert len(params) == 4
    from procs.cli.trader import preset_payload
    from procs.trading.broker import PaperBroker
    from procs.trading.engine import Engine
    from procs.trading.fills import FillModel
    from procs.trading.ledger import Ledger
    payload = preset_payload("apply", str(params[0].parent))
    lg = Ledger(tmp_path / "engine.sqlite")
    e = Engine(TraderConfig(), lg, PaperBroker(FillModel()), wall_ns=lambda: 0)
    got = e.apply_config("smtm", payload["preset"], payload["params"], payload["why"])
    assert got.take_profit_pct == json.loads(params[0].read_text())["params"]["take_profit_pct"]
    [(why,)] = [tuple(r) for r in lg.query("SELECT why FROM trade_audit WHERE action = 'config.apply'")]
    assert why.startswith("from backtest s/point-000")
    lg.close()
