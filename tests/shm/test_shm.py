"""The data plane's contracts: read-only readers, layout checks, restart, cleanup, rings."""

import numpy as np
import pytest

from procs.runtime.roster import STATUS_ROWS
from shm import LayoutMismatch, Overrun, SegmentNotFound, unlink_instance
from shm.segment import list_instance_objects
from shm.status import State, StatusRow, StatusTable
from shm.tables import CANDLE_DTYPE, CANDLES, CLOSED


def candle(i, flags=CLOSED):
    return (1800 * i, 100.0 + i, 110.0 + i, 90.0 + i, 105.0 + i, 1.5, 150.0, 3, flags)


def test_reader_cannot_write(instance):
    w = CANDLES.create(instance, "30m", 4, 16)
    row = w.assign_row("KRW-BTC")
    w.write(row, 0, candle(0))
    r = CANDLES.open(instance, "30m", 4, 16)
    with pytest.raises(ValueError, match="read-only"):
        r.data[0, 0] = r.data[0, 1]
    with pytest.raises(ValueError, match="read-only"):
        r.control["count"][0] = 5
    with pytest.raises(TypeError):
        r.seg.mm[0] = 1
    with pytest.raises(TypeError):
        r.seg.mm.write(b"x")
    assert r.count(row) == 1


def test_layout_mismatch_names_segment_and_both_layouts(instance):
    CANDLES.create(instance, "30m", 4, 16)
    with pytest.raises(LayoutMismatch) as e:
        CANDLES.open(instance, "30m", 4, 32)
    msg = str(e.value)
    assert f"/smtm.{instance}.candles.30m" in msg
    assert '"capacity":16' in e.value.found and '"capacity":32' in e.value.expected
    # a writer with another layout is refused too (it must not silently discard data)
    with pytest.raises(LayoutMismatch):
        CANDLES.create(instance, "30m", 8, 16)


def test_missing_segment_is_a_clear_error(instance):
    with pytest.raises(SegmentNotFound, match=f"/smtm.{instance}.candles.1d"):
        CANDLES.open(instance, "1d", 4, 16)


def test_restarted_writer_keeps_data_and_repairs_a_torn_row(instance):
    w = CANDLES.create(instance, "30m", 4, 16)
    row = w.assign_row("KRW-ETH")
    for i in range(20):
        w.write(row, i, candle(i))
    w.publish()
    w.control["seq"][row] += 1  # simulate a writer killed inside a write: seq left odd
    w.close()
    w2 = CANDLES.create(instance, "30m", 4, 16)  # "restart"
    assert w2.row_of("KRW-ETH") == row and w2.count(row) == 20
    assert int(w2.control["seq"][row]) % 2 == 0
    recs, cnt = CANDLES.open(instance, "30m", 4, 16).read_last(row, 16)
    assert cnt == 20 and list(recs["t"]) == [1800 * i for i in range(4, 20)]


def test_ring_wraps_in_order_and_reports_overrun(instance):
    w = CANDLES.create(instance, "30m", 2, 16)
    row = w.assign_row("KRW-XRP")
    for i in range(37):
        w.write(row, i, candle(i))
    r = CANDLES.open(instance, "30m", 2, 16)
    recs, cnt = r.read_last(row, 200)
    assert cnt == 37 and len(recs) == 16 and list(recs["t"] // 1800) == list(range(21, 37))
    recs, _ = r.read_range(row, 30)
    assert list(recs["t"] // 1800) == list(range(30, 37))
    with pytest.raises(Overrun):
        r.read_range(row, 20)
    # in-place update of the newest record, append window checks
    w.write(row, 36, candle(99))
    assert r.read_last(row, 1)[0]["o"][0] == 199.0
    with pytest.raises(IndexError):
        w.write(row, 10, candle(10))
    with pytest.raises(IndexError):
        w.write(row, 38, candle(38))


def test_write_many_is_one_section_and_global_seq_moves(instance):
    w = CANDLES.create(instance, "4h", 2, 16)
    row = w.assign_row("KRW-SOL")
    g0 = w.global_seq
    recs = np.array([candle(i) for i in range(5)], dtype=CANDLE_DTYPE)
    s0 = int(w.control["seq"][row])
    w.write_many(row, 0, recs)
    w.publish()
    assert int(w.control["seq"][row]) == s0 + 2
    assert w.global_seq == g0 + 1 and w.count(row) == 5


def test_status_rows_and_unlink(instance):
    st = StatusTable.writer(instance, STATUS_ROWS)
    row = StatusRow(st, "ingest")
    row.msgs_in, row.dropped, row.detail = 7, 2, "connected"
    row.beat(State.RUNNING)
    r = StatusTable.open(instance, STATUS_ROWS).read("ingest")
    assert (int(r["msgs_in"]), int(r["dropped"]), int(r["state"])) == (7, 2, State.RUNNING)
    assert bytes(r["detail"]) == b"connected"
    CANDLES.create(instance, "30m", 2, 16)
    objs = list_instance_objects(instance)
    assert f"/smtm.{instance}.status" in objs and f"/smtm.{instance}.candles.30m" in objs
    removed = unlink_instance(instance)
    assert set(removed) == set(objs) and not list_instance_objects(instance)


def test_a_record_that_does_not_fit_is_refused_before_the_seqlock(instance):
    """``write`` packs a tuple with struct before the section: a bad value raises, and the row is as it was
    (count, seq even and unchanged, the record) — a reader never sees half a record."""
    import struct

    from shm.tables import TRADES
    from shm.trading import TRADE_DTYPE
    ring = CANDLES.create(instance, "30m", 2, 16)
    row = ring.assign_row("KRW-BTC")
    good = (1_700_000_000, 1.0, 2.0, 0.5, 1.5, 3.0, 4.5, 2, CLOSED)
    ring.write(row, 0, good)
    seq, cnt = int(ring.seqs()[row]), ring.count(row)
    for bad in ((1.5, *good[1:]),                     # a float where the dtype has int64
                (*good[:7], 2**40, 0),                # int32 overflow
                ("x", *good[1:]),                     # not a number
                good[:-1]):                           # a field missing
        with pytest.raises((struct.error, TypeError, ValueError)):
            ring.write(row, cnt, bad)
        assert int(ring.seqs()[row]) == seq and ring.count(row) == cnt
    rec, _ = ring.read_last(row, 1)
    assert tuple(rec[0].tolist()) == good
    ring.write(row, 1, np.array(good, CANDLE_DTYPE)[()])          # a structured scalar is taken as well
    assert ring.count(row) == 2 and tuple(ring.read_last(row, 1)[0][0].tolist()) == good
    tape = TRADES.create(instance, None, 2, 16)                    # a raw pad field: bytes, zero-filled
    r = tape.assign_row("KRW-BTC")
    tape.write(r, 0, (1, 2.0, 3.0, 4, 5, 1, b""))
    got = tape.read_last(r, 1)[0][0]
    assert got.dtype == TRADE_DTYPE and got["recv_ns"] == 5 and got["side"] == 1 and bytes(got["_pad"]) == bytes(7)
