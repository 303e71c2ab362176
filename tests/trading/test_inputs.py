"""The trader's shared-memory reader: every trade once, a lapped reader skips and counts (never
crashes), a closed candle is evaluated once by its start time even when a repair moves indices."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from procs.runtime.config import BaseConfig, ShmConfig
from procs.trading.inputs import ShmInputs
from shm.tables import CANDLE_DTYPE, CANDLES, INDICATOR_DTYPE, INDICATORS, TRADES
from shm.trading import TRADE_DTYPE


class Recorder:
    def __init__(self):
        self.trades, self.closes = [], []

    def on_trade(self, market, t_ms, price, volume, trade_id):
        self.trades.append((market, trade_id))

    def on_candle_close(self, market, t, close, prev, cur):
        self.closes.append((market, t))

    def on_universe(self, tradable):
        pass


def _setup(instance, cap=64):
    base = BaseConfig("replay", instance, Path("/tmp"), ("KRW-BTC",),
                      ShmConfig(rows=2, capacity=cap, timeframes=("30m",), trades_capacity=cap))
    tr = TRADES.create(instance, None, 2, cap)
    cd = CANDLES.create(instance, "30m", 2, cap)
    ind = INDICATORS.create(instance, "30m", 2, cap)
    for t in (tr, cd, ind):
        t.assign_row("KRW-BTC", 0)
    inp = ShmInputs(base, "30m")
    assert inp.attach() == ""
    return inp, tr, cd, ind


def _trades(tr, start, n):
    recs = np.zeros(n, TRADE_DTYPE)
    recs["t_ms"] = 1_730_000_000_000 + np.arange(start, start + n) * 1000
    recs["price"], recs["volume"], recs["sequential_id"] = 100.0, 1.0, np.arange(start, start + n)
    tr.write_many(0, tr.count(0), recs)
    tr.publish()


def _candles(cd, ind, ts, start):
    c = np.zeros(len(ts), CANDLE_DTYPE)
    c["t"], c["c"] = ts, 100.0
    v = np.zeros(len(ts), INDICATOR_DTYPE)
    v["t"], v["macd"], v["macd_signal"] = ts, 1.0, 0.0
    cd.write_many(0, start, c, truncate=True)
    ind.write_many(0, start, v, truncate=True)
    cd.publish()
    ind.publish()


def test_every_trade_once_and_a_lapped_reader_skips_without_failing(instance):
    inp, tr, cd, ind = _setup(instance)
    eng = Recorder()
    _trades(tr, 0, 10)
    assert inp.poll(eng) == 10 and [i for _, i in eng.trades] == list(range(10))
    assert inp.poll(eng) == 0
    _trades(tr, 10, 300)                      # lapped: the ring holds 64
    n = inp.poll(eng)
    assert 0 < n <= 64 and inp.missed == 300 - n
    ids = [i for _, i in eng.trades]
    assert ids == sorted(set(ids)) and ids[-1] == 309


def test_closes_once_by_time_even_when_a_repair_moves_indices(instance):
    inp, tr, cd, ind = _setup(instance)
    eng = Recorder()
    t0 = 1_730_000_000 - 1_730_000_000 % 1800
    ts = [t0 + k * 1800 for k in range(5)]
    _candles(cd, ind, ts, 0)
    inp = ShmInputs(inp.base, "30m")          # a trader (re)starting on this history ...
    assert inp.attach() == ""
    inp.poll(eng)
    assert eng.closes == []                  # ... does not evaluate it again
    _candles(cd, ind, [t0 + 5 * 1800], 5)    # candle 4 closed: 5 opened
    inp.poll(eng)
    assert eng.closes == [("KRW-BTC", t0 + 4 * 1800)]
    # a repair rewrites history with one candle more before them (indices move by one)
    _candles(cd, ind, [t0 - 1800, *ts, t0 + 5 * 1800, t0 + 6 * 1800], 0)
    inp.poll(eng)
    assert eng.closes == [("KRW-BTC", t0 + 4 * 1800), ("KRW-BTC", t0 + 5 * 1800)]
