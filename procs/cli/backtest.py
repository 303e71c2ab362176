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
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from render.text import format_market_ms

from ..backtest.runner import BacktestSpec, day_s
from ..market.tape import markets_in
from ..runtime.config import ROOT, Config, TraderConfig
from ..runtime.presets import PRESETS
from ..trading.portfolio import group_closed
from .trader import _console, group_table


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
    # the engine, numpy's work and matplotlib are imported by this command only, not by every `smtm`
    from ..backtest import metrics as M
    from ..backtest import report
    from ..backtest.runner import run_backtest
    try:
        trader = trader_config(cfg, args.preset, args.set or [])
        data = Path(args.data) if args.data else cfg.data_path()
        if args.markets == "all":
            markets = markets_in(data)
        elif args.markets:
            markets = tuple(m.strip().upper() for m in args.markets.split(",") if m.strip())
        else:
            markets = cfg.markets.codes
        if not markets:
            raise ValueError(f"no market: {data / 'minute30'} has no KRW-*.csv(.gz)")
        spec = BacktestSpec(markets, data, day_s(args.start), day_s(args.end), args.timeframe or cfg.signal_timeframe,
                            trades_per_candle=cfg.exchange.trades_per_candle, rearm=args.rearm,
                            cache_dir=ROOT / "run" / "cache" / "candles")
    except ValueError as e:
        print(f"smtm backtest: {e}", file=sys.stderr)
        return 2
    kind = "compare" if args.compare else "sweep" if args.sweep else trader.preset.lower()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{kind}"
    out = Path(args.out) if args.out else ROOT / "run" / "backtests" / run_id
    logging.getLogger("smtm.trader").setLevel(logging.ERROR)   # the timeline is in the ledger, not the console
    console = _console()
    if args.split is not None and (not args.sweep or not 0.05 <= args.split <= 0.95):
        print("smtm backtest: --split F goes with --sweep, F between 0.05 and 0.95", file=sys.stderr)
        return 2
    if args.compare or args.sweep:
        try:
            return many(args, cfg, spec, trader, out, console)
        except ValueError as e:
            print(f"smtm backtest: {e}", file=sys.stderr)
            return 2
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
    M.write_params(out, trader, out.name)
    print_report(console, trader, spec, m, result.closed)
    events = result.events
    for t_ms, action, detail in events:
        console.print(f"{format_market_ms(t_ms, '%Y-%m-%d')} {action}: {detail}")
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


def _progress(console: Console, what: str):
    return Progress(TextColumn(what), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console, transient=True, auto_refresh=False, disable=not sys.stdout.isatty())


def many(args, cfg: Config, spec: BacktestSpec, base: TraderConfig, out: Path, console: Console) -> int:
    """``--compare`` / ``--sweep``: every run on every core, one table, one page (``compare.html`` /
    ``sweep.html``) with the equity curves or the heat maps."""
    from render.report import heatmap_png, overlay_png, write_page

    from ..backtest import metrics as M
    from ..backtest import sweep as S
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.compare:
        names = [n.strip().upper() for n in args.compare.split(",") if n.strip()]
        bad = [n for n in names if n not in PRESETS]
        if bad:
            raise ValueError(f"--compare {','.join(bad)}: allowed presets are {', '.join(sorted(PRESETS))}")
        jobs = []
        for n in names:
            trader = trader_config(cfg, n, args.set or [])
            jobs.append(((n, "all"), spec, trader, out / n, cfg.indicator, cfg.symbols))
        refused: list = []
    else:
        grid = S.parse_grid(args.sweep)
        pts = S.points(grid)
        jobs, refused = S.sweep_jobs(spec, base, pts, out, args.split, cfg.indicator, cfg.symbols)
    with _progress(console, "backtests") as bar:
        task = bar.add_task("runs", total=len(jobs))
        results = S.run_many(jobs, args.processes,
                             lambda done, total: (bar.update(task, completed=done), bar.refresh()))
    wall = time.perf_counter() - t0
    errors = [r for r in results if "error" in r]
    for r in errors:
        console.print(f"[red]{r['key']}: {r['error']}[/red]")
    cols = ("return_pct", "max_drawdown_pct", "sharpe", "trades", "win_rate_pct", "profit_factor")
    if args.compare:
        t = Table(title=f"compare: {len(spec.markets)} markets, {wall:.1f} s", title_justify="left")
        t.add_column("")
        for r in results:
            t.add_column(r["key"][0], justify="right")
        for k in (*cols, "exposure_pct", "fees", "buy_and_hold_pct"):
            t.add_row(M.DEFINITIONS[k][0], *(M.shown(k, r[k]) if "error" not in r else "-" for r in results))
        console.print(t)
        ok = [r for r in results if "error" not in r]
        page = write_page(out, "compare.html", "Backtest: presets compared",
                          f"{len(spec.markets)} markets, signal timeframe {spec.timeframe}",
                          {"equity.png": overlay_png({r["key"][0]: (r["equity_t"], r["equity"]) for r in ok},
                                                     "Equity (KRW, fees paid)")},
                          ["", *(r["key"][0] for r in ok)],
                          [[M.DEFINITIONS[k][0], *(M.shown(k, r[k]) for r in ok)]
                           for k in (*cols, "exposure_pct", "fees", "buy_and_hold_pct")])
    else:
        keys = list(grid)
        by = {}
        for r in results:
            if "error" not in r:
                by.setdefault(r["key"][0], {})[r["key"][1]] = r
        halves = ("in", "out") if args.split is not None else ("all",)
        t = Table(title=f"sweep: {len(pts)} points ({len(refused)} refused), {len(jobs)} backtests on "
                        f"{args.processes or os.cpu_count()} cores in {wall:.1f} s", title_justify="left")
        for k in keys:
            t.add_column(k, justify="right")
        for h in halves:
            t.add_column(f"return {h}" if h != "all" else "return", justify="right")
        t.add_column("max DD" + (" in" if args.split is not None else ""), justify="right")
        t.add_column("trades", justify="right")
        first = halves[0]
        order = sorted(by, key=lambda i: -by[i].get(first, {}).get("return_pct", -1e9))
        rows = []
        for i in order:
            r = by[i]
            row = [f"{pts[i][k]:g}" for k in keys] + [f"{r[h]['return_pct']:+.2f} %" if h in r else "-" for h in halves]
            row += [f"{r[first]['max_drawdown_pct']:.2f} %", f"{r[first]['trades']:,}"]
            rows.append(row)
        for row in rows[:25]:
            t.add_row(*row)
        console.print(t)
        for i, why in refused[:5]:
            console.print(f"point {pts[i]}: refused: {why}")
        images = {}
        if 1 <= len(keys) <= 2:
            xs = grid[keys[0]]
            ys = grid[keys[1]] if len(keys) == 2 else [0.0]
            for h in halves:
                z = np.full((len(ys), len(xs)), np.nan)
                for i, p in enumerate(pts):
                    if h in by.get(i, {}):
                        z[ys.index(p[keys[1]]) if len(keys) == 2 else 0, xs.index(p[keys[0]])] = by[i][h]["return_pct"]
                label = {"in": "in-sample", "out": "out-of-sample", "all": "whole window"}[h]
                images[f"heatmap-{h}.png"] = heatmap_png(xs, ys, z, keys[0], keys[1] if len(keys) == 2 else "",
                                                         f"Return, {label} (%)")
        page = write_page(out, "sweep.html", "Backtest: parameter sweep",
                          f"{len(spec.markets)} markets; " + (f"in-sample the first {args.split:.0%} of the window, "
                                                              f"out-of-sample the rest" if args.split is not None
                                                              else "the whole window"),
                          images, [*keys, *(f"return {h}" for h in halves), "max DD", "trades"], rows)
    console.print(f"written to {out} (report: {page})")
    return 1 if errors and len(errors) == len(results) else 0


def print_report(console: Console, trader: TraderConfig, spec: BacktestSpec, m: dict, trades: list[dict]) -> None:
    from ..backtest import metrics as M
    span = (f"{_day(spec.start_s)} .. {_day(spec.end_s)}" if spec.start_s or spec.end_s else "all the data")
    t = Table(title=f"backtest: preset {trader.preset}, {len(spec.markets)} markets, {span}, {spec.timeframe}",
              title_justify="left", show_header=False)
    for k, (label, _) in M.DEFINITIONS.items():
        t.add_row(label, M.shown(k, m[k]))
    t.add_row("run", f"{m['ticks']:,} trades in {m['wall_s']:.2f} s ({m['ticks'] / max(m['wall_s'], 1e-9):,.0f}/s)")
    console.print(t)
    for title, key, group in (("per market", "market", lambda x: x["market"]),
                              ("per exit reason", "exit reason", lambda x: x["exit_reason"]),
                              ("per month (UTC, by exit)", "month", M.month)):
        console.print(group_table(title, key, group_closed(trades, group)))


def _day(s: int | None) -> str:
    return format_market_ms(s * 1000, "%Y-%m-%d") if s else "…"


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
    b.add_argument("--compare", metavar="P1,P2,...", help="run these presets side by side (SAFE,BALANCED,AGGRESSIVE)")
    b.add_argument("--sweep", action="append", metavar="KEY=START:STOP:STEP",
                   help="a grid axis over a strategy key (tp, sl, share, positions, rsi or the full name); repeatable")
    b.add_argument("--split", type=float, metavar="F",
                   help="with --sweep: in-sample = the first F of the window, out-of-sample = the rest (e.g. 0.7)")
    b.add_argument("--processes", type=int, help="worker processes for --compare / --sweep (default: every core)")
    b.add_argument("--rearm", action="store_true",
                   help="ARM again at each new KST day after a risk limit disarmed the engine (an operator's ARM)")

