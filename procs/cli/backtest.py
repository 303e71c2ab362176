"""``smtm backtest``: the trader's engine over recorded data in one process (:mod:`procs.backtest`), no running
instance needed or touched. Prints the totals and the trades per market, per exit reason and per month, and
writes ``run/backtests/<id>/`` (ledger.sqlite, trades.csv, equity.csv, metrics.json, and the report:
report.html with its PNGs).

Exit status: 0 done; 2 bad arguments (a bad ``--set`` names the key and the allowed values).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..backtest import metrics as M
from ..backtest import report
from ..backtest.runner import BacktestSpec, day_s, run_backtest
from ..runtime.config import ROOT, Config, TraderConfig
from ..runtime.presets import PRESETS


def _value(s: str):
    """A ``--set`` value: JSON (numbers, true / false, quoted strings), else the bare string."""
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return s


def trader_config(cfg: Config, preset: str | None, sets: list[str]) -> TraderConfig:
    """The profile's ``[trader]`` with ``--preset`` and ``--set key=value`` (strategy keys, or ``trader.*``
    keys) applied; raises ValueError naming the key."""
    raw = cfg.trader.model_dump()
    strategy = {k: v for k, v in raw["strategy"].items() if v is not None}
    if preset:
        raw["preset"], strategy = preset.upper(), {}
    for item in sets:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        key = key.removeprefix("trader.").removeprefix("strategy.")
        if key in TraderConfig.model_fields["strategy"].annotation.model_fields:
            strategy[key] = _value(val)
        elif key in TraderConfig.model_fields and key not in ("strategy", "upbit", "broker"):
            raw[key] = _value(val)
        else:
            raise ValueError(f"--set {key}: not a strategy or trader key")
    raw["strategy"] = strategy
    raw.update(arm_on_start=True, broker="paper")
    try:
        return TraderConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg'].removeprefix('Value error, ')}"
                                   for er in e.errors())) from None


def cmd_backtest(args, cfg: Config, sup) -> int:
    try:
        trader = trader_config(cfg, args.preset, args.set or [])
        data = Path(args.data) if args.data else cfg.data_path()
        if args.markets == "all":
            markets = tuple(sorted({f.name.split("_")[0] for f in (data / "minute30").glob("KRW-*.csv*")}))
        elif args.markets:
            markets = tuple(m.strip().upper() for m in args.markets.split(",") if m.strip())
        else:
            markets = cfg.markets.codes
        if not markets:
            raise ValueError(f"no market: {data / 'minute30'} has no KRW-*.csv(.gz)")
        spec = BacktestSpec(markets, data, day_s(args.start), day_s(args.end), args.timeframe or cfg.signal_timeframe,
                            rearm=args.rearm)
    except ValueError as e:
        print(f"smtm backtest: {e}", file=sys.stderr)
        return 2
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{trader.preset.lower()}"
    out = Path(args.out) if args.out else ROOT / "run" / "backtests" / run_id
    logging.getLogger("smtm.trader").setLevel(logging.ERROR)   # the timeline is in the ledger, not the console
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    try:
        with Progress(TextColumn("backtest"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} trades"),
                      TimeElapsedColumn(), console=console, transient=True, disable=not sys.stdout.isatty()) as bar:
            task = bar.add_task("run", total=None)
            result = run_backtest(spec, trader, out, indicators=cfg.indicator, symbols=cfg.symbols,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"smtm backtest: {e}", file=sys.stderr)
        return 2
    m = M.compute(result)
    M.write_files(result, m)
    print_report(console, trader, spec, m, M.closed_trades(result.ledger_path))
    events = M.risk_events(result.ledger_path)
    for t_ms, action, detail in events:
        console.print(f"{_day(t_ms // 1000)} {action}: {detail}")
    if any(a.endswith("-> DISARMED") for _, a, _ in events) and not spec.rearm:
        console.print("the engine stayed DISARMED after that (as the trader does until an operator ARMs it); "
                      "--rearm ARMs it again at each new KST day")
    span = f"{_day(spec.start_s)} .. {_day(spec.end_s)}" if spec.start_s or spec.end_s else "all the data"
    kinds = [a.removeprefix("trip ") for _, a, _ in events if a.startswith("trip ")]
    trips = (f"{len(kinds)} risk trip(s): " + ", ".join(f"{k} x{kinds.count(k)}" for k in sorted(set(kinds)))
             if kinds else "no risk trip")
    page = report.write(result, m, f"Backtest: preset {trader.preset}",
                        f"{len(spec.markets)} markets, {span}, signal timeframe {spec.timeframe}; "
                        f"{m['ticks']:,} trades through the trader's engine in {m['wall_s']:.2f} s; {trips}"
                        + ("; re-armed each new KST day (--rearm)" if spec.rearm else ""), args.chart)
    console.print(f"written to {out} (report: {page})")
    return 0


def print_report(console: Console, trader: TraderConfig, spec: BacktestSpec, m: dict, trades: list[dict]) -> None:
    span = (f"{_day(spec.start_s)} .. {_day(spec.end_s)}" if spec.start_s or spec.end_s else "all the data")
    t = Table(title=f"backtest: preset {trader.preset}, {len(spec.markets)} markets, {span}, {spec.timeframe}",
              title_justify="left", show_header=False)
    pf = m["profit_factor"]
    for k, v in (("net P&L (fees paid)", f"{m['net_pnl']:+,.0f} KRW  ({m['return_pct']:+.2f} %)"),
                 ("buy and hold, equal weight", f"{m['buy_and_hold_pct']:+.2f} %"),
                 ("max drawdown", f"{m['max_drawdown_pct']:.2f} %"),
                 ("Sharpe / Sortino (daily, x sqrt 365)", f"{m['sharpe']:.2f} / {m['sortino']:.2f}"),
                 ("trades / win rate", f"{m['trades']:,} / {m['win_rate_pct']:.1f} %"),
                 ("profit factor", "inf" if math.isinf(pf) else f"{pf:.2f}"),
                 ("exposure / average hold", f"{m['exposure_pct']:.1f} % / {m['avg_hold_h']:.1f} h"),
                 ("fees", f"{m['fees']:,.0f} KRW"),
                 ("run", f"{m['ticks']:,} trades in {m['wall_s']:.2f} s "
                         f"({m['ticks'] / max(m['wall_s'], 1e-9):,.0f}/s)")):
        t.add_row(k, v)
    console.print(t)
    for title, key in (("per market", lambda x: x["market"]), ("per exit reason", lambda x: x["exit_reason"]),
                       ("per month (UTC, by exit)", M.month)):
        tb = Table(title=title, title_justify="left")
        for c in ("", "trades", "won", "realized KRW", "fees KRW"):
            tb.add_column(c, justify="left" if not c else "right")
        for g, n, won, pnl, fees in M.breakdown(trades, key):
            tb.add_row(g, f"{n:,}", f"{won:,}", f"{pnl:+,.0f}", f"{fees:,.0f}")
        console.print(tb)


def _day(s: int | None) -> str:
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%d") if s else "…"


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backtest", help="the trader's engine over recorded data, in one process")
    b.add_argument("--preset", choices=sorted(PRESETS), type=str.upper, help="default: the profile's trader.preset")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a strategy key (take_profit_pct=3) or trader key (max_order_krw=1e6); repeatable")
    b.add_argument("--markets", help="comma-separated market codes, or all (every market in --data; default: "
                                     "markets.codes)")
    b.add_argument("--from", dest="start", default="", help="first day, YYYY-MM-DD (UTC)")
    b.add_argument("--to", dest="end", default="", help="day after the last, YYYY-MM-DD (UTC)")
    b.add_argument("--data", help="a directory with minute30/*.csv(.gz) Upbit candles (default: the bundled data)")
    b.add_argument("--timeframe", help="signal timeframe: 30m, 1h, 4h or 1d (default: the profile's)")
    b.add_argument("--out", help="output directory (default: run/backtests/<time>-<preset>)")
    b.add_argument("--chart", type=str.upper, help="the market of the report's price chart (default: most traded)")
    b.add_argument("--rearm", action="store_true",
                   help="ARM again at each new KST day after a risk limit disarmed the engine (an operator's ARM)")

