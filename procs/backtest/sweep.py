"""Many backtests at once: a parameter grid (``--sweep tp=1:5:0.5 sl=0.5:3:0.5``) or a list of presets
(``--compare SAFE,BALANCED,AGGRESSIVE``), run on every core (``multiprocessing``, one backtest per process at
a time), each point in its own directory. With ``split`` each point runs twice: on the first ``split`` of the
window (in-sample) and on the rest (out-of-sample), so a point that only fits the past shows.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from pydantic import ValidationError

from ..market.tape import ReplayTape
from ..runtime.config import IndicatorConfig, SymbolsConfig, TraderConfig
from . import metrics as M
from .runner import BacktestSpec, run_backtest

#: short names a sweep may use for strategy keys
ALIASES = {"tp": "take_profit_pct", "sl": "stop_loss_pct", "share": "order_share", "positions": "max_positions",
           "rsi": "rsi_max"}
#: what a sweep keeps of each run's metrics
KEPT = ("return_pct", "max_drawdown_pct", "sharpe", "sortino", "trades", "win_rate_pct", "profit_factor",
        "exposure_pct", "fees", "net_pnl", "buy_and_hold_pct")


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["tp=1:5:0.5", "sl=0.5:3:0.5"]`` → {strategy key: values, both ends included}. Raises ValueError."""
    out: dict[str, list[float]] = {}
    strategy_keys = TraderConfig.model_fields["strategy"].annotation.model_fields
    for item in items:
        key, sep, rng = item.partition("=")
        key = ALIASES.get(key, key)
        if not sep or key not in strategy_keys:
            raise ValueError(f"--sweep {item!r}: expected KEY=START:STOP:STEP with a strategy key "
                             f"({', '.join(sorted([*ALIASES, *strategy_keys]))})")
        try:
            start, stop, step = (float(x) for x in rng.split(":"))
        except ValueError:
            raise ValueError(f"--sweep {item!r}: START:STOP:STEP must be three numbers") from None
        if step <= 0 or stop < start:
            raise ValueError(f"--sweep {item!r}: needs STEP > 0 and STOP >= START")
        n = int(round((stop - start) / step)) + 1
        values = [round(start + i * step, 10) for i in range(n)]
        out[key] = [int(v) for v in values] if key == "max_positions" else values   # an int key stays int
    return out


def points(grid: dict[str, list[float]]) -> list[dict]:
    """Every combination of the grid's values, first key slowest."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


#: The tapes of the runs, built once in the parent before the workers fork (they share them): spec -> tape.
_TAPES: dict[BacktestSpec, ReplayTape] = {}


def prepare_tapes(specs: list[BacktestSpec]) -> None:
    """Build the tape of each window not built yet, from one read of the data, for the runs that follow."""
    missing = [s for s in specs if s not in _TAPES]
    if missing:
        first = missing[0]
        whole = ReplayTape.build(first.data_dir, list(first.markets), first.trades_per_candle,
                                 cache_dir=first.cache_dir)
        for s in missing:
            _TAPES[s] = whole.window(s.start_s, s.end_s)


def _one(job: tuple) -> dict:
    """One backtest in a worker process: its kept metrics and equity curve (or the error that stopped it); its
    ``params.json`` written beside its ledger."""
    key, spec, trader, out, indicators, symbols = job
    try:
        r = run_backtest(spec, trader, out, indicators=indicators, symbols=symbols, tape=_TAPES.get(spec))
        m = M.compute(r)
        M.write_files(r, m)
        M.write_params(out, trader, f"{Path(out).parent.name}/{Path(out).name}")
        return {"key": key, **{k: m[k] for k in KEPT}, "equity_t": r.equity["t"], "equity": r.equity["equity"]}
    except (ValueError, FileNotFoundError) as e:
        return {"key": key, "error": str(e)}


def run_many(jobs: list[tuple], processes: int | None = None, progress: Callable[[int, int], None] | None = None
             ) -> list[dict]:
    """Run ``jobs`` (see :func:`_one`) on ``processes`` workers (default: every core); results in job order.
    Each window's tape is built once, here, before the workers fork."""
    prepare_tapes(list(dict.fromkeys(j[1] for j in jobs)))
    n = processes or os.cpu_count() or 1
    out: dict = {}
    if n == 1 or len(jobs) == 1:
        for i, j in enumerate(jobs):
            out[j[0]] = _one(j)
            if progress:
                progress(i + 1, len(jobs))
    else:
        with get_context("fork").Pool(n) as pool:
            for i, res in enumerate(pool.imap_unordered(_one, jobs)):
                out[res["key"]] = res
                if progress:
                    progress(i + 1, len(jobs))
    return [out[j[0]] for j in jobs]


def sweep_jobs(spec: BacktestSpec, base: TraderConfig, grid_points: list[dict], out_dir: Path,
               split: float | None, indicators: IndicatorConfig, symbols: SymbolsConfig
               ) -> tuple[list[tuple], list[tuple[int, str]]]:
    """The jobs of a sweep (one per point, two with a split: ``(i, "in")`` and ``(i, "out")``) and the points
    the strategy's validation refuses ``(i, why)``."""
    halves = [("all", spec)]
    if split is not None:
        whole = ReplayTape.build(spec.data_dir, list(spec.markets), spec.trades_per_candle, spec.start_s, spec.end_s,
                                 spec.cache_dir)
        lo, hi = whole.span_s()
        mid = lo + int((hi - lo) * split) // 86_400 * 86_400     # on a UTC day boundary
        halves = [("in", replace(spec, start_s=lo, end_s=mid)), ("out", replace(spec, start_s=mid, end_s=hi))]
        for _, s in halves:
            _TAPES[s] = whole.window(s.start_s, s.end_s)
    jobs, refused = [], []
    raw = base.model_dump()
    for i, p in enumerate(grid_points):
        try:
            trader = TraderConfig.model_validate({**raw, "strategy": {**{k: v for k, v in raw["strategy"].items()
                                                                          if v is not None}, **p}})
        except ValidationError as e:
            refused.append((i, "; ".join(er["msg"].removeprefix("Value error, ") for er in e.errors())))
            continue
        for half, s in halves:
            jobs.append(((i, half), s, trader, out_dir / f"point-{i:03d}-{half}", indicators, symbols))
    return jobs, refused
