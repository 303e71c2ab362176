"""Indicator benchmarks: one incremental update of every indicator per candle vs recomputing
them with TA-Lib over the last 1,000 candles (what a non-incremental engine does on each
candle), and incremental updates per second across 100 markets."""
import itertools

import numpy as np
import talib

from bench.conftest import RESULTS
from procs.market.indicators import IndicatorSet
from procs.market.tape import load_dataset
from tests.helpers import ROOT

CLOSES = load_dataset(ROOT / "data" / "upbit", ["KRW-BTC"])["KRW-BTC"]["c"]


def test_incremental_update_all_indicators(benchmark):
    ind = IndicatorSet()
    for c in CLOSES[:1000]:
        ind.update(float(c))
    it = itertools.cycle(CLOSES.tolist())   # as many calls as pytest-benchmark makes
    benchmark(lambda: ind.update(next(it)))
    RESULTS["incremental"] = {"median_us": benchmark.stats.stats.median * 1e6, "group": "indicators"}


def test_talib_recompute_1000_candles(benchmark):
    window = np.ascontiguousarray(CLOSES[-1000:])

    def recompute():
        talib.EMA(window, 12), talib.EMA(window, 26), talib.RSI(window, 14)
        talib.MACD(window, 12, 26, 9), talib.BBANDS(window, 20, 2.0, 2.0, 0)

    benchmark(recompute)
    RESULTS["talib_recompute"] = {"median_us": benchmark.stats.stats.median * 1e6, "group": "indicators"}


def test_updates_per_second_100_markets(benchmark):
    sets = [IndicatorSet() for _ in range(100)]
    for s in sets:
        for c in CLOSES[:200]:
            s.update(float(c))
    prices = CLOSES[200:1200].tolist()
    state = {"i": 0}

    def one_round():  # one new closed candle for each of 100 markets
        c = prices[state["i"] % len(prices)]
        state["i"] += 1
        for s in sets:
            s.update(c)

    benchmark(one_round)
    RESULTS["100 markets"] = {"updates_per_s": 100 / benchmark.stats.stats.median, "group": "indicators"}
