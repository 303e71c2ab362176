"""Backtest speed, side by side with a peer, in one run: the 40 markets × 3 months of 30-minute candles in
``../shared/data/upbit/candles`` (data the repository does not bundle; skipped without it).

* **ours, the command** — ``smtm backtest --markets all --preset BALANCED`` as a user runs it (a new process:
  interpreter, imports, the run, the terminal summary, trades.csv / metrics.json, the HTML report with its five
  PNGs), pinned to one core with ``taskset``; the parsed candles come from ``run/cache/candles`` (one
  unpinned run first fills it; a cold first run parses the CSVs, +0.4 s);
* **ours, the engine** — ``run_backtest`` alone (the trader's engine, BALANCED, top 8) over the whole portfolio,
  trade by trade (6 synthesized trades per candle: ≈ 1.04 M trades), shared cash and position limits;
* **peer** — backtesting.py 0.6.6: a MACD 12/26/9 golden cross with take-profit 5 % / stop-loss 2.5 %, dead
  cross exit and 0.05 % commission, one market at a time, candle by candle, no shared cash or position limit
  (the data frames built before the clock starts).

The in-process ones run with the benchmark process pinned to the same core as the command; the figures are wall
seconds for the whole work, best of three.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import RESULTS, SHARED_CANDLES, shared_markets
from procs.backtest.runner import BacktestSpec, run_backtest
from procs.market.tape import load_dataset
from procs.runtime.config import SymbolsConfig, TraderConfig
from tests.helpers import ROOT

DATA = SHARED_CANDLES
CACHE = ROOT / "run" / "cache" / "candles"
pytestmark = pytest.mark.skipif(not (DATA / "minute30").is_dir(), reason=f"no 40-market data at {DATA}")
ROUNDS = 3


def _markets() -> tuple[str, ...]:
    return tuple(shared_markets())


@pytest.fixture
def one_core():
    """The benchmark process on one core (the last one) while the test runs; yields that core."""
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def test_ours_command_40_markets(benchmark, one_core, tmp_path):
    smtm = [sys.executable, "-m", "procs.cli", "backtest", "--data", str(DATA), "--markets", "all",
            "--preset", "BALANCED"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # as a user runs it
    subprocess.run([*smtm, "--out", str(tmp_path / "warm")], cwd=ROOT, env=env, check=True, capture_output=True)
    walls: list[float] = []

    def run():
        out = tmp_path / f"run{len(walls)}"
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", str(one_core), *smtm, "--out", str(out)], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        walls.append(time.perf_counter() - t0)
        assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
        shutil.rmtree(out)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    RESULTS["backtest, ours: the smtm backtest command (40 markets, whole portfolio)"] = {
        "wall_s": min(walls), "units": 1_035_702, "unit": "trades", "group": "backtest"}


def test_ours_40_markets(benchmark, one_core):
    logging.getLogger("smtm.trader").setLevel(logging.ERROR)
    markets = _markets()
    out: dict = {"wall": []}

    def run():
        t0 = time.perf_counter()
        r = run_backtest(BacktestSpec(markets, DATA, cache_dir=CACHE), TraderConfig(arm_on_start=True),
                         Path(tempfile.mkdtemp(prefix="smtmbt")) / "run", symbols=SymbolsConfig(top_n=8))
        out["wall"].append(time.perf_counter() - t0)
        out["trades"] = r.ticks
        shutil.rmtree(r.out_dir.parent)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    RESULTS["backtest, ours: the engine (40 markets, whole portfolio, trade by trade)"] = {
        "wall_s": min(out["wall"]), "units": out["trades"], "unit": "trades", "group": "backtest"}


def test_peer_backtesting_py_40_markets(benchmark, one_core):
    pd = pytest.importorskip("pandas")
    bt = pytest.importorskip("backtesting")
    from backtesting.lib import crossover

    class MacdCross(bt.Strategy):
        def init(self):
            close = pd.Series(self.data.Close)
            macd = close.ewm(span=12, adjust=False).mean() - close.ewm(span=26, adjust=False).mean()
            self.macd = self.I(lambda: macd.to_numpy(), name="macd")
            self.signal = self.I(lambda: macd.ewm(span=9, adjust=False).mean().to_numpy(), name="signal")

        def next(self):
            price = self.data.Close[-1]
            if crossover(self.macd, self.signal) and not self.position:
                self.buy(size=0.15, sl=price * 0.975, tp=price * 1.05)
            elif crossover(self.signal, self.macd) and self.position:
                self.position.close()

    frames = []
    for c in load_dataset(DATA, _markets()).values():
        idx = pd.to_datetime(c["t"], unit="s")
        frames.append(pd.DataFrame({"Open": c["o"], "High": c["h"], "Low": c["l"], "Close": c["c"],
                                    "Volume": c["v"]}, index=idx))
    candles = sum(len(f) for f in frames)
    walls: list[float] = []

    def run():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in frames:
                bt.Backtest(f, MacdCross, cash=10_000_000, commission=0.0005, finalize_trades=True).run()
        walls.append(time.perf_counter() - t0)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    RESULTS["backtest, peer backtesting.py 0.6.6 (40 markets, one at a time)"] = {
        "wall_s": min(walls), "units": candles, "unit": "candles", "group": "backtest"}
    assert np.isfinite(min(walls))
