"""Backtest speed, side by side with a peer, in one run: the 40 markets × 3 months of 30-minute candles in
``../shared/data/upbit/candles`` (data the repository does not bundle; skipped without it).

* **ours** — ``run_backtest`` (the trader's engine, the BALANCED preset) over the whole portfolio, trade by
  trade (6 synthesized trades per candle: ≈ 1.04 M trades), shared cash and position limits;
* **peer** — backtesting.py 0.6.6: a MACD 12/26/9 golden cross with take-profit 5 % / stop-loss 2.5 %, dead
  cross exit and 0.05 % commission, one market at a time, candle by candle, no shared cash or position limit.

Both on the same core (the benchmark process); the figures are wall seconds for the whole work.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import RESULTS
from procs.backtest.runner import BacktestSpec, run_backtest
from procs.market.tape import load_dataset
from procs.runtime.config import SymbolsConfig, TraderConfig
from tests.helpers import ROOT

DATA = ROOT.parent / "shared" / "data" / "upbit" / "candles"
pytestmark = pytest.mark.skipif(not (DATA / "minute30").is_dir(), reason=f"no 40-market data at {DATA}")


def _markets() -> tuple[str, ...]:
    return tuple(sorted({f.name.split("_")[0] for f in (DATA / "minute30").glob("KRW-*.csv*")}))


def test_ours_40_markets(benchmark):
    logging.getLogger("smtm.trader").setLevel(logging.ERROR)
    markets = _markets()
    out: dict = {}

    def run():
        t0 = time.perf_counter()
        r = run_backtest(BacktestSpec(markets, DATA), TraderConfig(arm_on_start=True),
                         Path(tempfile.mkdtemp(prefix="smtmbt")) / "run", symbols=SymbolsConfig(top_n=8))
        out.update(wall=time.perf_counter() - t0, trades=r.trades)
    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS["backtest, ours (40 markets, whole portfolio, trade by trade)"] = {
        "wall_s": out["wall"], "units": out["trades"], "unit": "trades"}


def test_peer_backtesting_py_40_markets(benchmark):
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
    out: dict = {}

    def run():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in frames:
                bt.Backtest(f, MacdCross, cash=10_000_000, commission=0.0005, finalize_trades=True).run()
        out["wall"] = time.perf_counter() - t0
    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS["backtest, peer backtesting.py 0.6.6 (40 markets, one at a time)"] = {
        "wall_s": out["wall"], "units": candles, "unit": "candles"}
    assert np.isfinite(out["wall"])
