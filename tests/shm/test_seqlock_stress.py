"""The seqlock under contention, across processes: no torn record with the protocol, and the
same harness without it does see torn records (so the test can fail)."""
import multiprocessing as mp
import time

import numpy as np
import pytest

from shm.ring import SeqlockTimeout
from shm.tables import CANDLE_DTYPE, CANDLES

ROWS, CAP = 2, 256
BLOCK = 32   # records rewritten in one seqlock section in "rewrite" mode (a record alone is one 64-byte copy)


def _record(k: int) -> np.void:
    f = float(k)
    return np.array((k, f, f, f, f, f, f, k & 0x7FFFFFFF, 0), dtype=CANDLE_DTYPE)[()]


def _block(k: int) -> np.ndarray:
    """BLOCK records that all say ``k``: a reader that sees two values saw a write half done."""
    return np.array([_record(k)] * BLOCK, dtype=CANDLE_DTYPE)


def _consistent(rec) -> bool:
    k = int(rec["t"])
    prices_ok = all(float(rec[f]) == float(k) for f in ("o", "h", "l", "c", "v", "value"))
    return prices_ok and int(rec["n"]) == k & 0x7FFFFFFF


def _writer_one_slot(instance, stop, mode):
    ring = CANDLES.create(instance, "30m", ROWS, CAP)
    row = ring.row_of("KRW-BTC")
    k = 1
    if mode == "rewrite":
        while not stop.is_set():
            ring.write_many(row, 0, _block(k))  # the newest records, rewritten in place
            k += 1
    else:  # append ~50k records/s: the writer laps readers of the last 200 (capacity 256)
        while not stop.is_set():
            ring.write(row, ring.count(row), _record(ring.count(row)))
            t = time.perf_counter() + 20e-6
            while time.perf_counter() < t:
                pass


def _reader(instance, seqlock, seconds, mode, out):
    ring = CANDLES.open(instance, "30m", ROWS, CAP, seqlock=seqlock)
    row = ring.row_of("KRW-BTC")
    reads = torn = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mode == "rewrite":
            try:
                recs, _ = ring.read_last(row, BLOCK, max_spins=1000)
            except SeqlockTimeout:  # starved by the writer: no data, and nothing torn
                continue
            if len(recs):
                reads += 1
                torn += not (all(_consistent(r) for r in recs) and (recs["t"] == recs["t"][0]).all())
        else:
            try:
                recs, cnt = ring.read_last(row, 200, max_spins=1000)
            except SeqlockTimeout:  # starved by the writer: no data, and nothing torn
                continue
            reads += 1
            idx = np.arange(cnt - len(recs), cnt)
            ok = (recs["t"] == idx) & (recs["c"] == idx.astype(float)) & (recs["n"] == idx)
            torn += int(not ok.all())
    out.put((reads, torn))


def _run(instance, seqlock: bool, seconds: float, mode: str):
    ctx = mp.get_context("spawn")  # no fork of a process with threads: nothing inherited, nothing to deadlock
    ring = CANDLES.create(instance, "30m", ROWS, CAP)
    row = ring.assign_row("KRW-BTC")
    ring.write_many(row, 0, _block(0) if mode == "rewrite" else _block(0)[:1])
    stop, out = ctx.Event(), ctx.Queue()
    w = ctx.Process(target=_writer_one_slot, args=(instance, stop, mode), daemon=True)
    readers = [ctx.Process(target=_reader, args=(instance, seqlock, seconds, mode, out), daemon=True)
               for _ in range(2)]
    procs = [w, *readers]
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=seconds + 60) for _ in readers]
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return sum(r[0] for r in results), sum(r[1] for r in results)


@pytest.mark.parametrize("mode", ["rewrite", "append"])
def test_no_torn_reads_with_the_seqlock(instance, mode):
    reads, torn = _run(instance, seqlock=True, seconds=2.5, mode=mode)
    assert reads > 5_000, reads
    assert torn == 0, f"{torn} torn of {reads}"


def test_torn_reads_without_the_protocol(instance):
    reads, torn = _run(instance, seqlock=False, seconds=2.0, mode="rewrite")
    assert torn > 0, f"no torn read in {reads}: the stress harness cannot detect tearing"
