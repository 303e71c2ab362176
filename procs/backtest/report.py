"""The backtest report's data: the run's ledger, equity curve and source candles turned into the plain numbers
:class:`render.report.ReportData` draws (every pixel is in ``render/``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from render.report import ReportData, write_report
from render.text import format_market_ms

from ..market.tape import SOURCE_UNIT_S
from . import metrics as M
from .runner import BacktestResult


def fills_of(result: BacktestResult, market: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((buy times s, prices), (sell times s, prices)) of ``market``'s fills."""
    def pick(side):
        sel = [(t // 1000, p) for m, s, t, p in result.fills if m == market and s == side]
        return np.array([t for t, _ in sel], np.int64), np.array([p for _, p in sel], float)
    return pick("bid"), pick("ask")


def build(result: BacktestResult, metrics: dict, title: str, subtitle: str, chart: str | None = None) -> ReportData:
    trades = result.closed
    per_market = M.breakdown(trades, lambda x: x["market"])
    if chart is None:
        chart = max(per_market, key=lambda r: r[1])[0] if per_market else ""
    c = result.candles.get(chart)
    buys, sells = fills_of(result, chart)
    return ReportData(
        title=title, subtitle=subtitle,
        metrics=[(label, M.shown(k, metrics[k]), dfn) for k, (label, dfn) in M.DEFINITIONS.items()],
        equity_t=result.equity["t"], equity=result.equity["equity"], benchmark=M.benchmark_curve(result),
        per_market=per_market, per_exit=M.breakdown(trades, lambda x: x["exit_reason"]),
        per_month=M.breakdown(trades, M.month),
        monthly_return_pct=M.monthly_returns(result.equity, result.starting_cash),
        chart_market=chart or "", chart_t=(c["t"] + SOURCE_UNIT_S) if c is not None else np.zeros(0),
        chart_close=c["c"] if c is not None else np.zeros(0), buys=buys, sells=sells,
        events=[(format_market_ms(t, "%Y-%m-%d %H:%M"), a, w) for t, a, w in result.events])


def write(result: BacktestResult, metrics: dict, title: str, subtitle: str, chart: str | None = None) -> Path:
    """The report (``report.html`` and its PNGs) in the run's directory; returns the page's path."""
    return write_report(build(result, metrics, title, subtitle, chart), result.out_dir)
