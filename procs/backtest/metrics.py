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
import json
import math
from pathlib import Path

import numpy as np

from render.text import format_market_ms

from ..market.tape import SOURCE_UNIT_S
from ..runtime.config import TraderConfig
from ..trading.portfolio import group_closed
from .runner import TRADE_COLUMNS, BacktestResult

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


def period_ends(keys: np.ndarray) -> np.ndarray:
    """Indices of the last sample of each run of equal ``keys`` (a day, a month)."""
    return np.flatnonzero(np.r_[keys[1:] != keys[:-1], True]) if len(keys) else np.zeros(0, int)


def daily_returns(equity: np.ndarray) -> np.ndarray:
    """Returns of the equity at each UTC day's last sample (the first day against the starting sample)."""
    if not len(equity):
        return np.zeros(0)
    closes = np.r_[equity["equity"][0], equity["equity"][period_ends(equity["t"] // 86_400)]]
    return closes[1:] / closes[:-1] - 1.0


def monthly_returns(equity: np.ndarray, starting_cash: float) -> list[tuple[str, float]]:
    """Return per calendar month (UTC), %: the month's last equity against the previous month's last (the first
    month against the starting cash)."""
    months = np.array([format_market_ms(t * 1000, "%Y-%m") for t in equity["t"].tolist()])
    ends = period_ends(months)
    closes = np.r_[starting_cash, equity["equity"][ends]]
    return [(str(months[i]), float((b / a - 1) * 100)) for i, a, b in zip(ends, closes[:-1], closes[1:], strict=True)]


def benchmark_curve(result: BacktestResult) -> np.ndarray:
    """Equity of the buy-and-hold benchmark at each equity sample: the starting cash split equally over the
    markets, each share bought at its first candle's open (the tape's first trade) and valued at the last close
    by then (the last trade), a fee on each side."""
    t = result.equity["t"]
    total = np.zeros(len(t))
    held = {m: c for m, c in result.candles.items() if len(c)}
    if not held:
        return np.full(len(t), result.starting_cash)
    share, keep = result.starting_cash / len(held), (1 - result.fee_rate) ** 2
    for c in held.values():
        idx = np.searchsorted(c["t"] + SOURCE_UNIT_S, t, side="right") - 1
        first = c["o"][0]
        total += share / first * np.where(idx >= 0, c["c"][np.maximum(idx, 0)], first) * keep
    return total


def max_drawdown_pct(eq: np.ndarray) -> float:
    if not len(eq):
        return 0.0
    peak = np.maximum.accumulate(eq)
    return float(((peak - eq) / peak).max() * 100.0)


def compute(result: BacktestResult) -> dict:
    """Every metric of the module docstring, as a dict of Python numbers."""
    trades = result.closed
    eq = result.equity
    start = result.starting_cash
    final = float(eq["equity"][-1]) if len(eq) else start
    r = daily_returns(eq)
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if len(r) else 0.0
    realized = [t["realized"] for t in trades]
    gross_win = sum(x for x in realized if x > 0)
    gross_loss = -sum(x for x in realized if x < 0)
    bench = benchmark_curve(result)
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
        "fees": result.fees,
        "buy_and_hold_pct": float(bench[-1] / start - 1) * 100.0 if len(bench) else 0.0,
        "ticks": result.ticks, "wall_s": result.wall_s,
    }


def breakdown(trades: list[dict], key) -> list[tuple[str, int, int, float, float]]:
    """(group, trades, wins, realized KRW, fees KRW) per group, by ``key(trade)``, sorted by group
    (:func:`procs.trading.portfolio.group_closed`, as ``smtm pnl --by``)."""
    return [(g["key"], g["trades"], g["wins"], g["realized"], g["fees"]) for g in group_closed(trades, key)]


def month(t: dict) -> str:
    """A closed position's exit month (UTC), ``YYYY-MM``."""
    return format_market_ms(t["closed_ms"], "%Y-%m")


def write_files(result: BacktestResult, metrics: dict) -> None:
    """``trades.csv`` (one row per closed position), ``equity.csv`` and ``metrics.json`` beside the ledger."""
    with open(result.out_dir / "trades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, TRADE_COLUMNS)
        w.writeheader()
        w.writerows(result.closed)
    with open(result.out_dir / "equity.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(result.equity.dtype.names)
        w.writerows(result.equity.tolist())
    (result.out_dir / "metrics.json").write_text(json.dumps(
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}, indent=2))


def write_params(out: Path, trader: TraderConfig, run_id: str) -> Path:
    """``params.json``: what ``smtm preset apply <dir>`` sends to the trader — the preset and its strategy
    overrides (trader keys set with ``--set`` are configuration, not sent) — and the run it came from."""
    path = Path(out) / "params.json"
    path.write_text(json.dumps({"preset": trader.preset, "params": trader.strategy.overrides(), "backtest": run_id},
                               indent=2))
    return path
