"""Candle building: a write that fails changes nothing (regression: a trade whose time overflows
int64 left the open candle flagged CLOSED, and the indicator folded a provisional close for good)."""
import pytest

from procs.market.candles import CandleBuilder
from shm.tables import CANDLES, CLOSED

T0 = 1_729_670_400_000  # 2024-10-23T08:00:00Z


def test_a_failed_write_changes_neither_ring_nor_builder(instance):
    ring = CANDLES.create(instance, "30m", 2, 64)
    row = ring.assign_row("KRW-BTC")
    b = CandleBuilder(ring, 1800)
    b.on_trade(row, T0 + 1_000, 100.0, 1.0)
    before = ring.read_last(row, 5)[0].tobytes()
    with pytest.raises(OverflowError):
        b.on_trade(row, 10**25, 200.0, 1.0)        # a candle start no int64 can hold
    assert ring.read_last(row, 5)[0].tobytes() == before
    b.on_trade(row, T0 + 2_000, 101.0, 1.0)         # the next trade of the same, still open candle
    recs, cnt = ring.read_last(row, 5)
    assert cnt == 1
    assert not recs[0]["flags"] & CLOSED, "the open candle was published as closed"
    assert (recs[0]["c"], recs[0]["n"], recs[0]["v"]) == (101.0, 2, 2.0)

