"""The backtest report's data: the run's ledger, equity curve and source candles turned into the plain numbers
:class:`render.report.ReportData` draws (every pixel is in ``render/``)."""
from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from render.report import ReportData, write_report

from . import metrics as M
from .runner import BacktestResult

SOURCE_S = 1800   # the data's candles: their close is at start + 30 min


def benchmark_curve(result: BacktestResult) -> np.ndarray:
    """Equity of the buy-and-hold benchmark at each equity sample: the starting cash split equally, each share
    bought at its market's first price, valued at the last close by then, a fee on each side."""
    t = result.equity["t"]
    total = np.zeros(len(t))
    markets = [m for m in result.first_price if m in result.candles and len(result.candles[m])]
    if not markets:
        return np.full(len(t), result.starting_cash)
    share = result.starting_cash / len(markets)
    keep = (1 - result.fee_rate) ** 2
    for m in markets:
        c = result.candles[m]
        idx = np.searchsorted(c["t"] + SOURCE_S, t, side="right") - 1
        price = np.where(idx >= 0, c["c"][np.maximum(idx, 0)], result.first_price[m])
        total += share / result.first_price[m] * price * keep
    return total


def monthly_returns(result: BacktestResult) -> list[tuple[str, float]]:
    """Return per calendar month (UTC), %: the month's last equity against the previous month's last (the first
    month against the starting cash)."""
    out, before, cur, last = [], result.starting_cash, None, None
    for t, e in zip(result.equity["t"].tolist(), result.equity["equity"].tolist(), strict=True):
        month = datetime.fromtimestamp(t, UTC).strftime("%Y-%m")
        if cur is not None and month != cur:
            out.append((cur, (last / before - 1) * 100))
            before = last
        cur, last = month, e
    if cur is not None:
        out.append((cur, (last / before - 1) * 100))
    return out


def fills_of(ledger: Path, market: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    rows = db.execute("SELECT side, t_ms, price FROM fills WHERE market = ? ORDER BY id", (market,)).fetchall()
    db.close()

    def pick(side):
        sel = [(t // 1000, p) for s, t, p in rows if s == side]
        return np.array([t for t, _ in sel], np.int64), np.array([p for _, p in sel], float)
    return pick("bid"), pick("ask")


def build(result: BacktestResult, metrics: dict, title: str, subtitle: str, chart: str | None = None) -> ReportData:
    trades = M.closed_trades(result.ledger_path)
    per_market = M.breakdown(trades, lambda x: x["market"])
    if chart is None:
        chart = max(per_market, key=lambda r: r[1])[0] if per_market else ""
    c = result.candles.get(chart)
    buys, sells = fills_of(result.ledger_path, chart) if chart else ((np.zeros(0),) * 2, (np.zeros(0),) * 2)
    return ReportData(
        title=title, subtitle=subtitle,
        metrics=[(label, M.shown(k, metrics[k]), dfn) for k, (label, dfn) in M.DEFINITIONS.items()],
        equity_t=result.equity["t"], equity=result.equity["equity"], benchmark=benchmark_curve(result),
        per_market=per_market, per_exit=M.breakdown(trades, lambda x: x["exit_reason"]),
        per_month=M.breakdown(trades, M.month), monthly_return_pct=monthly_returns(result),
        chart_market=chart or "", chart_t=(c["t"] + SOURCE_S) if c is not None else np.zeros(0),
        chart_close=c["c"] if c is not None else np.zeros(0), buys=buys, sells=sells,
        events=[(datetime.fromtimestamp(t // 1000, UTC).strftime("%Y-%m-%d %H:%M"), a, w)
                for t, a, w in M.risk_events(result.ledger_path)])


def write(result: BacktestResult, metrics: dict, title: str, subtitle: str, chart: str | None = None) -> Path:
    """The report (``report.html`` and its PNGs) in the run's directory; returns the page's path."""
    return write_report(build(result, metrics, title, subtitle, chart), result.out_dir)
