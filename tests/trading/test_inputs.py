"""The trader's shared-memory reader: every trade once, markets merged in the order ingest received them
(also when the rows' counts are read while ingest writes), a lapped reader skips and counts (never crashes);
a candle closes right after the trade that starts the next one, is evaluated once by its start time even
when a repair moves indices, with the indicator process's values computed over the ring's closes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from procs.market.indicators import IndicatorSet
from procs.runtime.config import BaseConfig, IndicatorConfig, ShmConfig
from procs.trading.inputs import VALUE_COLUMNS, ShmInputs
from shm.tables import CANDLE_DTYPE, CANDLES, TRADES
from shm.trading import TRADE_DTYPE

T0 = 1_730_000_000 - 1_730_000_000 % 1800     # a 30 m candle start (Unix s)


class Recorder:
    def __init__(self):
        self.events = []

    @property
    def trades(self):
        return [(e[1], e[2]) for e in self.events if e[0] == "trade"]

    @property
    def closes(self):
        return [(e[1], e[2]) for e in self.events if e[0] == "close"]

    def on_trade(self, market, t_ms, price, volume, trade_id):
        self.events.append(("trade", market, trade_id))

    def on_candle_close(self, market, t, close, prev, cur):
        self.events.append(("close", market, t, close, prev, cur))

    def on_universe(self, tradable):
        pass


def _setup(instance, cap=64, markets=("KRW-BTC",)):
    base = BaseConfig("replay", instance, Path("/tmp"), markets,
                      ShmConfig(rows=2, capacity=cap, timeframes=("30m",), trades_capacity=cap))
    tr = TRADES.create(instance, None, 2, cap)
    cd = CANDLES.create(instance, "30m", 2, cap)
    for row, m in enumerate(markets):
        tr.assign_row(m, row)
        cd.assign_row(m, row)
    inp = ShmInputs(base, "30m")
    assert inp.attach() == ""
    return inp, tr, cd


def _trades(tr, start, n, row=0, t0_ms=T0 * 1000, step_ms=1000, recv0=None):
    recs = np.zeros(n, TRADE_DTYPE)
    recs["t_ms"] = t0_ms + np.arange(n) * step_ms
    recs["price"], recs["volume"], recs["sequential_id"] = 100.0, 1.0, np.arange(start, start + n)
    recs["recv_ns"] = (recv0 if recv0 is not None else start) + np.arange(n)
    tr.write_many(row, tr.count(row), recs)
    tr.publish()


def _candles(cd, ts, start, closes=None, row=0):
    c = np.zeros(len(ts), CANDLE_DTYPE)
    c["t"] = ts
    c["c"] = closes if closes is not None else 100.0
    cd.write_many(row, start, c, truncate=True)
    cd.publish()


def test_every_trade_once_and_a_lapped_reader_skips_without_failing(instance):
    inp, tr, cd = _setup(instance)
    eng = Recorder()
    _trades(tr, 0, 10)
    assert inp.poll(eng) == 10 and [i for _, i in eng.trades] == list(range(10))
    assert inp.poll(eng) == 0
    _trades(tr, 10, 300)                      # lapped: the ring holds 64
    n = inp.poll(eng)
    assert 0 < n <= 64 and inp.missed == 300 - n
    ids = [i for _, i in eng.trades]
    assert ids == sorted(set(ids)) and ids[-1] == 309


def test_markets_merge_in_receive_order_over_a_consistent_cut(instance):
    """ingest wrote BTC (recv 10), ETH (recv 11), BTC (recv 12); the first read of the counts missed BTC's
    first record (read before it was written) but saw ETH's: the second read brings BTC's recv 10 in, and
    BTC's recv 12, received after the newest record of the first read, waits for the next poll."""
    inp, tr, cd = _setup(instance, markets=("KRW-BTC", "KRW-ETH"))
    eng = Recorder()
    _trades(tr, 100, 1, row=0, recv0=10)
    _trades(tr, 200, 1, row=1, recv0=11)
    _trades(tr, 101, 1, row=0, recv0=12)
    real, reads = inp.trades.counts, []

    def counts():      # the first read: BTC's row was read before its first record landed
        reads.append(1)
        return np.array([0, 1], np.uint64) if len(reads) == 1 else real()
    inp.trades.counts = counts
    assert inp.poll(eng) == 2
    assert eng.trades == [("KRW-BTC", 100), ("KRW-ETH", 200)]
    inp._gseq = (-1, -1)
    assert inp.poll(eng) == 1
    assert eng.trades == [("KRW-BTC", 100), ("KRW-ETH", 200), ("KRW-BTC", 101)]
    # interleaved records of two rows read in one poll are applied in receive order, not row by row
    _trades(tr, 300, 3, row=1, recv0=20, t0_ms=T0 * 1000 + 60_000)
    recs = np.zeros(1, TRADE_DTYPE)
    recs["t_ms"], recs["price"], recs["sequential_id"], recs["recv_ns"] = T0 * 1000 + 60_000, 100.0, 102, 21
    tr.write_many(0, tr.count(0), recs)
    assert inp.poll(eng) == 4
    assert eng.trades[3:] == [("KRW-ETH", 300), ("KRW-BTC", 102), ("KRW-ETH", 301), ("KRW-ETH", 302)]


def test_a_candle_closes_after_the_trade_that_starts_the_next_with_the_indicator_values(instance):
    inp, tr, cd = _setup(instance, cap=256)
    eng = Recorder()
    closes = 100.0 + np.sin(np.arange(60) / 5.0) * 10
    ts = [T0 + k * 1800 for k in range(60)]
    ref = IndicatorSet(**IndicatorConfig().periods())
    want = [dict(zip(VALUE_COLUMNS, ref.update(c), strict=True)) for c in closes]
    for k in range(60):                  # ingest: the candle first, then the trade on the tape
        _candles(cd, ts[k:k + 1], k, closes[k:k + 1])
        _trades(tr, k, 1, t0_ms=ts[k] * 1000 + 5000, recv0=k)
        inp.poll(eng)
        if k >= 2:
            # the trade of candle k is applied, then candle k - 1 closes
            assert eng.events[-2][0] == "trade" and eng.events[-1][:3] == ("close", "KRW-BTC", ts[k - 1])
    got = [e for e in eng.events if e[0] == "close"]
    assert [e[2] for e in got] == ts[1:59]           # the first candle has none before it: not evaluated
    for e, k in zip(got, range(1, 59)):
        assert e[3] == closes[k]
        for name in VALUE_COLUMNS:
            for have, exp in ((e[4][name], want[k - 1][name]), (e[5][name], want[k][name])):
                assert have == exp or (math.isnan(have) and math.isnan(exp)), (k, name)
    assert inp.rebuilds == 1                # computed over the ring once, then incrementally


def test_closes_once_by_time_even_when_a_repair_moves_indices(instance):
    inp, tr, cd = _setup(instance)
    eng = Recorder()
    ts = [T0 + k * 1800 for k in range(5)]
    _candles(cd, ts, 0)
    _trades(tr, 0, 1, t0_ms=ts[4] * 1000 + 1000)
    inp.poll(eng)
    assert eng.closes == []                  # a trader (re)starting: the first trade it sees closes nothing
    _candles(cd, [T0 + 5 * 1800], 5)         # candle 4 closed: 5 opened ...
    _trades(tr, 1, 1, t0_ms=(T0 + 5 * 1800) * 1000 + 1000)
    inp.poll(eng)
    assert eng.closes == [("KRW-BTC", ts[4])]    # ... by its first trade
    before = inp.rebuilds
    # a repair rewrites history with one candle more before them (indices move by one) and candle 5 closes
    _candles(cd, [T0 - 1800, *ts, T0 + 5 * 1800, T0 + 6 * 1800], 0)
    _trades(tr, 2, 1, t0_ms=(T0 + 6 * 1800) * 1000 + 1000)
    _trades(tr, 3, 1, t0_ms=(T0 + 6 * 1800) * 1000 + 2000)
    inp.poll(eng)
    assert eng.closes == [("KRW-BTC", ts[4]), ("KRW-BTC", T0 + 5 * 1800)]
    assert inp.rebuilds == before + 1         # the history changed: the values are computed over it again


def test_a_row_given_to_another_market_between_the_two_reads_loses_none_of_its_new_trades(instance):
    """The counts and generations are read one after the other: whichever way a reassignment falls between
    them (here the new generation with the old market's count), the row restarts at its end and the new
    market's trades are read from there — not skipped until its count passes the old market's."""
    inp, tr, cd = _setup(instance, markets=("KRW-BTC", "KRW-ETH"))
    eng = Recorder()
    _trades(tr, 0, 40)
    assert inp.poll(eng) == 40
    stale = inp.trades.counts()                # the old market's count, read just before ...
    tr.reassign_row(0, "KRW-XRP")              # ... ingest gives the row to another market
    real = inp.trades.counts
    inp.trades.counts = lambda: stale
    inp._gseq = (-1, -1)
    assert inp.poll(eng) == 0
    inp.trades.counts = real
    inp._gseq = (-1, -1)
    assert inp.poll(eng) == 0
    _trades(tr, 1000, 10, t0_ms=T0 * 1000 + 60_000, recv0=500)
    assert inp.poll(eng) == 10
    assert eng.trades[-10:] == [("KRW-XRP", 1000 + k) for k in range(10)]


def test_a_restarted_trader_evaluates_the_candle_that_was_open_when_it_stopped(instance):
    inp, tr, cd = _setup(instance)
    ts = [T0 + k * 1800 for k in range(41)]
    _candles(cd, ts, 0)
    _trades(tr, 0, 3, t0_ms=ts[40] * 1000 + 1000)    # candle 40 open, its trades on the tape
    again = ShmInputs(inp.base, "30m")                # the trader restarts here
    assert again.attach() == ""
    eng = Recorder()
    _candles(cd, [T0 + 41 * 1800], 41)
    _trades(tr, 3, 1, t0_ms=(T0 + 41 * 1800) * 1000 + 1000, recv0=10)
    assert again.poll(eng) == 1
    assert eng.closes == [("KRW-BTC", ts[40])]       # the first trade of candle 41 closes candle 40
    again.close()


def test_a_lapped_row_met_by_the_second_read_is_counted_missed_once(instance):
    inp, tr, cd = _setup(instance, markets=("KRW-BTC", "KRW-ETH"))
    eng = Recorder()
    _trades(tr, 0, 1, row=0, recv0=10)
    real, reads = inp.trades.counts, []

    def counts():      # the first read sees ETH's row still empty; meanwhile ingest laps it (64 kept)
        reads.append(1)
        return np.array([1, 0], np.uint64) if len(reads) == 1 else real()
    inp.trades.counts = counts
    _trades(tr, 100, 100, row=1, recv0=100)
    assert inp.poll(eng) == 1                  # BTC's; ETH's survivors were all received after it
    inp.trades.counts = real
    inp._gseq = (-1, -1)
    n = inp.poll(eng)
    assert inp.missed == 100 - n and [i for m, i in eng.trades if m == "KRW-ETH"] == list(range(200 - n, 200))
