"""The indicator engine follows rows that change hands: a row reclaimed for another market (even
while the indicator was down) gets a fresh indicator row under the new name and a cleared signal."""
import numpy as np

from procs.market.analytics import TimeframeWorker
from procs.runtime.config import IndicatorConfig
from shm.signals import SignalsTable
from shm.tables import CANDLE_DTYPE, CANDLES, CLOSED, INDICATORS

T = 1_729_670_400


def candles(n, price):
    rec = np.zeros(n, CANDLE_DTYPE)
    rec["t"] = T + 1800 * np.arange(n)
    for f in ("o", "h", "l", "c"):
        rec[f] = price + np.arange(n)
    rec["v"], rec["flags"] = 1.0, CLOSED
    return rec


def worker(instance, signals):
    return TimeframeWorker(CANDLES.open(instance, "30m", 2, 64), INDICATORS.create(instance, "30m", 2, 64),
                           IndicatorConfig().periods(), signals, ("macd_cross",), 70.0)


def test_a_row_reclaimed_while_the_indicator_was_down_is_followed(instance):
    cand = CANDLES.create(instance, "30m", 2, 64)
    row = cand.assign_row("KRW-X")
    cand.write_many(row, 0, candles(40, 100.0))
    cand.publish()
    signals = SignalsTable.writer(instance, 2)
    w = worker(instance, signals)
    w.step()
    signals.write_rows(row, (b"KRW-X", 1, b"macd_cross", T, 100.0, T))   # X's buy signal is on
    assert w.ind.row_of("KRW-X") == row
    # the indicator goes down; ingest reclaims the row for KRW-Y and writes its candles
    cand.reassign_row(row, "KRW-Y")
    cand.write_many(row, 0, candles(30, 5000.0))
    cand.publish()
    w2 = worker(instance, signals)                                         # the indicator restarts
    w2.step()
    assert w2.ind.row_of("KRW-Y") == row and w2.ind.row_of("KRW-X") is None
    ind, cnt = w2.ind.read_last_of("KRW-Y", 64)
    assert cnt == 30 and np.array_equal(ind["t"], candles(30, 5000.0)["t"])
    assert np.nanmin(ind["ema_slow"]) > 4000, "X's state was folded into Y's indicators"
    assert not signals.buyable().size, "X's buy signal survived the reclaim"


def test_a_market_back_on_another_row_gets_its_name_once_the_old_row_is_renamed(instance):
    """While the indicator was down, market X's row 5 went to Y and X came back on row 3: the indicator row 3
    takes X's name as soon as row 5 is renamed Y (the same step), not never."""
    c = CANDLES.create(instance, "30m", 8, 64)
    ind = INDICATORS.create(instance, "30m", 8, 64)
    periods = IndicatorConfig().periods()
    c.assign_row("KRW-XRP", 5)
    for k in range(3):
        c.write(5, k, (1800 * k, 1., 1., 1., 1., 1., 1., 1, CLOSED))
    TimeframeWorker(c, ind, periods).step()
    assert ind.row_of("KRW-XRP") == 5
    c.reassign_row(5, "KRW-SOL")
    c.write(5, 0, (9000, 2., 2., 2., 2., 1., 2., 1, 0))
    c.assign_row("KRW-XRP", 3)
    c.write(3, 0, (9000, 3., 3., 3., 3., 1., 3., 1, 0))
    w = TimeframeWorker(c, ind, periods)      # the restarted indicator
    w.step()
    assert ind.name(5) == "KRW-SOL"
    c.write(3, 1, (10800, 3., 3., 3., 3., 1., 3., 1, 0))   # X's next trade
    w.step()
    assert ind.row_of("KRW-XRP") == 3 and ind.count(3) == 2
