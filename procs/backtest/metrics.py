"""The metrics of a backtest, from its ledger and equity curve, with their definitions (money in KRW; a
*trade* is a closed position: its entry, every fill, its exit):

``net_pnl``            final equity − starting cash; positions still open are valued at their last price
                       less the sell fee (fees paid are in it)
``return_pct``         ``net_pnl`` / starting cash × 100
``max_drawdown_pct``   the largest fall of the equity curve from a running peak, in % of that peak (the
                       curve is sampled at every signal-timeframe boundary)
``sharpe``             mean / standard deviation (ddof 1) of daily returns (equity at each UTC day's last
                       sample), × √365 (crypto trades every day); risk-free rate 0
``sortino``            mean daily return / downside deviation (root mean square of the negative daily
                       returns, over all days), × √365
``win_rate_pct``       trades with realized P&L > 0, in % of trades
``profit_factor``      gross profit / gross loss of the trades (inf without a losing trade)
``exposure_pct``       share of the equity samples with at least one position held, in %
``trades``             closed positions; ``avg_hold_h`` their mean time from entry to exit, hours
``fees``               every fee paid (entries and exits, also of positions still open)
``buy_and_hold_pct``   the benchmark: the starting cash split equally over the markets, bought at each
                       market's first trade and valued at its last, less a fee on each side, in %
"""
from __future__ import annotations

import csv
import math
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .runner import BacktestResult

#: metric -> (label, definition), in the order shown
DEFINITIONS: dict[str, tuple[str, str]] = {
    "net_pnl": ("net P&L", "final equity − starting cash, KRW; fees paid are in it, positions still open valued at "
                           "their last price less the sell fee"),
    "return_pct": ("return", "net P&L / starting cash"),
    "buy_and_hold_pct": ("buy and hold", "the starting cash split equally over the markets, bought at each "
                                         "market's first trade, valued at its last, a fee on each side"),
    "max_drawdown_pct": ("max drawdown", "largest fall of the equity curve from a running peak, % of that peak "
                                         "(sampled at every signal-timeframe boundary)"),
    "sharpe": ("Sharpe", "mean / standard deviation (ddof 1) of daily returns (equity at each UTC day's last "
                         "sample) × √365; risk-free rate 0"),
    "sortino": ("Sortino", "mean daily return / downside deviation (RMS of the negative daily returns over all "
                           "days) × √365"),
    "trades": ("trades", "closed positions (entry, every fill, exit)"),
    "win_rate_pct": ("win rate", "trades with realized P&L > 0, % of trades"),
    "profit_factor": ("profit factor", "gross profit / gross loss of the trades"),
    "exposure_pct": ("exposure", "share of the equity samples with at least one position held"),
    "avg_hold_h": ("average hold", "mean time from entry to exit of the trades, hours"),
    "fees": ("fees", "every fee paid, KRW (0.05 % a side on Upbit KRW)"),
}


def shown(key: str, v: float) -> str:
    """A metric as the report shows it."""
    if key in ("net_pnl", "fees"):
        return f"{v:+,.0f} KRW" if key == "net_pnl" else f"{v:,.0f} KRW"
    if key.endswith("_pct"):
        return f"{v:+.2f} %" if key in ("return_pct", "buy_and_hold_pct") else f"{v:.2f} %"
    if key == "trades":
        return f"{int(v):,}"
    if key == "avg_hold_h":
        return f"{v:.1f} h"
    return "inf" if math.isinf(v) else f"{v:.2f}"


TRADE_COLUMNS = ("id", "market", "entry_tag", "exit_reason", "opened_ms", "closed_ms", "bought_qty", "buy_krw",
                 "sell_krw", "fees", "realized")


def closed_trades(ledger_path: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute(f"SELECT {', '.join(TRADE_COLUMNS)} FROM positions WHERE state = 'closed'"
                                        " ORDER BY closed_ms, id")]
    db.close()
    return rows


def account(ledger_path: Path) -> tuple[float, float, float]:
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    cash, realized, fees = db.execute("SELECT cash, realized, fees FROM account").fetchone()
    db.close()
    return cash, realized, fees


def risk_events(ledger_path: Path) -> list[tuple[int, str, str]]:
    """(market ms, action, detail) of every risk trip and mode change of the run, oldest first."""
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    rows = db.execute("SELECT market_ms, action, CASE WHEN detail = '' THEN why ELSE detail END FROM trade_audit"
                      " WHERE action LIKE 'trip %' OR action LIKE 'mode %' ORDER BY id").fetchall()
    db.close()
    return [tuple(r) for r in rows]


def daily_returns(equity: np.ndarray) -> np.ndarray:
    """Returns of the equity at each UTC day's last sample (the first day against the starting sample)."""
    if not len(equity):
        return np.zeros(0)
    days = equity["t"] // 86_400
    last = np.flatnonzero(np.r_[days[1:] != days[:-1], True])
    closes = np.r_[equity["equity"][0], equity["equity"][last]]
    return closes[1:] / closes[:-1] - 1.0


def max_drawdown_pct(eq: np.ndarray) -> float:
    if not len(eq):
        return 0.0
    peak = np.maximum.accumulate(eq)
    return float(((peak - eq) / peak).max() * 100.0)


def compute(result: BacktestResult) -> dict:
    """Every metric of the module docstring, as a dict of Python numbers."""
    trades = closed_trades(result.ledger_path)
    _, _, fees = account(result.ledger_path)
    eq = result.equity
    start = result.starting_cash
    final = float(eq["equity"][-1]) if len(eq) else start
    r = daily_returns(eq)
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if len(r) else 0.0
    realized = [t["realized"] for t in trades]
    gross_win = sum(x for x in realized if x > 0)
    gross_loss = -sum(x for x in realized if x < 0)
    fee = result.fee_rate
    bh = [result.last_price[m] / result.first_price[m] * (1 - fee) ** 2 - 1 for m in result.first_price]
    return {
        "starting_cash": start, "final_equity": final, "net_pnl": final - start,
        "return_pct": (final - start) / start * 100.0,
        "max_drawdown_pct": max_drawdown_pct(eq["equity"]),
        "sharpe": float(np.mean(r) / sd * math.sqrt(365)) if sd > 0 else 0.0,
        "sortino": float(np.mean(r) / downside * math.sqrt(365)) if downside > 0 else 0.0,
        "trades": len(trades),
        "win_rate_pct": 100.0 * sum(x > 0 for x in realized) / len(trades) if trades else 0.0,
        "profit_factor": gross_win / gross_loss if gross_loss > 0 else (math.inf if gross_win > 0 else 0.0),
        "exposure_pct": 100.0 * float(np.mean(eq["invested"] > 0)) if len(eq) else 0.0,
        "avg_hold_h": float(np.mean([(t["closed_ms"] - t["opened_ms"]) / 3.6e6 for t in trades])) if trades else 0.0,
        "fees": fees,
        "buy_and_hold_pct": float(np.mean(bh)) * 100.0 if bh else 0.0,
        "ticks": result.trades, "wall_s": result.wall_s,
    }


def breakdown(trades: list[dict], key) -> list[tuple[str, int, int, float, float]]:
    """(group, trades, wins, realized KRW, fees KRW) per group, by ``key(trade)``, sorted by group."""
    acc: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for t in trades:
        a = acc[key(t)]
        a[0] += 1
        a[1] += t["realized"] > 0
        a[2] += t["realized"]
        a[3] += t["fees"]
    return [(k, *acc[k]) for k in sorted(acc)]


def month(t: dict) -> str:
    return datetime.fromtimestamp(t["closed_ms"] / 1000, UTC).strftime("%Y-%m")


def write_files(result: BacktestResult, metrics: dict) -> None:
    """``trades.csv`` (one row per closed position), ``equity.csv`` and ``metrics.json`` beside the ledger."""
    import json
    trades = closed_trades(result.ledger_path)
    with open(result.out_dir / "trades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, TRADE_COLUMNS)
        w.writeheader()
        w.writerows(trades)
    with open(result.out_dir / "equity.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(result.equity.dtype.names)
        w.writerows(result.equity.tolist())
    (result.out_dir / "metrics.json").write_text(json.dumps(
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}, indent=2))
