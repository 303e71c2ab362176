"""Scale benchmarks (issue #11, point 6): ingest, indicator and shared memory at 10, 100 and 400 markets.

Everything runs in this process, on one core, over one instance of its own (the ``instance`` fixture; every
segment is unlinked at the end of each test and the test checks that none is left in ``/dev/shm``). The
configuration is the replay profile's (``load_config("replay")`` with ``SMTM_INSTANCE`` set): timeframes 30m,
4h, 1d, ring capacity 2048, trade tape 4096 a market; only ``shm.rows`` is set to the number of markets N, and
the markets are N synthetic codes (``KRW-S0001`` ...).

Set-up, not measured: each market gets 36 days of 30-minute history through the feed's own REST merge
(``feed.backfill.apply``, :class:`procs.market.backfill.Backfiller`, as ``warm_up`` does), so the rings hold what a
running instance holds and every indicator is past its seeding (the 1d ones too: 36 closed daily candles). The
trades are pre-built Upbit ``trade`` frames (``trade_message`` with SIMPLE names from ``procs.upbit.fields``,
encoded with orjson, as the replay exchange sends them), one trade a frame as Upbit sends them in SIMPLE (the
replay profile's SIMPLE_LIST batches up to 64 a frame, which spreads the per-frame costs of ``parse_frame`` and
``apply`` over them): round-robin over the N markets, each market trading every 5 minutes of market time (6 trades
per 30-minute candle, as the replay does), prices a random walk. A benchmark round is ``TRADES_PER_ROUND`` frames
(a multiple of every N). Besides the wall-clock figures (pytest-benchmark's median round), each test stores
``*_us_per_trade`` / ``*_us_per_update`` and ``*_cpu_share``: this thread's CPU time over the wall time of the
measured rounds — well under 1 means the machine was busy and the figure is low.

* ``test_ingest_scale[N]`` — ingest's per-frame work: ``parse_frame`` + ``CandleFeed.apply`` (three candle
  builders and the trade tape, a publish per frame) for every frame of a round; ``ingest_trades_per_s``.
* ``test_pipeline_scale[N]`` — the same frames, and after every N of them (one trade for each market) every
  timeframe's :class:`~procs.market.analytics.TimeframeWorker` steps over the candle rings (opened read-only, as
  the indicator process does when woken): ``indicator_updates_per_s`` = rows updated by ``step`` / time in
  ``step`` (each step updates all N rows of all three timeframes: no coalescing, the indicator's worst case);
  ``pipeline_trades_per_s`` = trades / the whole loop's time (feed + indicator on one core).
* ``test_shm_memory_scale[N]`` — every segment an instance creates (:func:`shm.tables.table_sizes`), created for
  real and checked against its size in ``/dev/shm``: ``shm_bytes`` the total; ``shm_bytes_by_table``;
  ``shm_bytes_per_market_per_timeframe`` each table's bytes per market row (``candles.<tf>`` and
  ``indicators.<tf>`` are one table per timeframe, so their figure is per market and timeframe; ``trades``,
  ``symbols``, ``signals``, ``positions`` are per market; ``trader``, ``orders``, ``status``, ``timeline.trader``
  do not grow with markets: 0, their bytes in ``shm_fixed_bytes``). Sizes are what each segment reserves
  (``ftruncate``); tmpfs allocates a page only when it is first written —
  ``shm_bytes_allocated_after_pipeline`` is what the pipeline test's segments held after its run.

Entries go to ``RESULTS["scale, <N> markets"]`` with ``"group": "scale"``.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import orjson
import pytest

from bench.conftest import RESULTS
from procs.market.analytics import TimeframeWorker
from procs.market.feed import CandleFeed
from procs.replay.protocol import trade_message
from procs.runtime.config import ShmConfig
from procs.runtime.loader import load_config
from procs.runtime.roster import STATUS_ROWS
from procs.upbit import fields
from procs.upbit.parsing import parse_frame
from shm.segment import list_instance_objects, unlink_instance
from shm.signals import SignalsTable
from shm.status import StatusTable
from shm.symbols import SymbolsTable
from shm.tables import BACKFILLED, CANDLE_DTYPE, CANDLES, INDICATORS, TIMELINE, TRADES, table_sizes
from shm.trading import OrdersTable, PositionsTable, TraderTable

MARKETS = (10, 100, 400)
TRADES_PER_ROUND = 20_000      # frames per benchmark round (a multiple of every N)
ROUNDS, WARMUP_ROUNDS = 4, 1
HISTORY_DAYS = 36              # > 34 closes: the 1d indicators are past their seeding too
T_HIST = 1_717_200_000         # 2024-06-01 00:00 UTC, the first history candle
TF_FINE = 1800
T_START = T_HIST + HISTORY_DAYS * 86_400   # the first trade (2024-07-07; every trade stays in the past)
STEP_MS = 300_000              # a market trades every 5 minutes of market time: 6 trades per 30 m candle


def _codes(n: int) -> list[str]:
    return [f"KRW-S{i:04d}" for i in range(1, n + 1)]


def _config(monkeypatch, instance: str, n: int):
    """The replay profile for ``instance`` with ``shm.rows = n`` and ``n`` synthetic markets."""
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    cfg = load_config("replay")
    assert cfg.instance == instance
    shm = ShmConfig.model_validate({**cfg.shm.model_dump(), "rows": n})
    return cfg, dataclasses.replace(cfg.base, markets=tuple(_codes(n)), shm=shm)


def _bases(n: int) -> np.ndarray:
    return 10.0 ** np.random.default_rng(7).uniform(1, 8, n)   # 10 to 100,000,000 KRW


def _history(n: int) -> list[np.ndarray]:
    """Per market, ``HISTORY_DAYS`` of 30-minute candles (REST shape: BACKFILLED) ending just before T_START."""
    rng = np.random.default_rng(11)
    k = HISTORY_DAYS * 86_400 // TF_FINE
    out = []
    for base in _bases(n):
        c = base * np.exp(np.cumsum(rng.normal(0, 0.004, k)))
        o = np.r_[base, c[:-1]]
        recs = np.zeros(k, CANDLE_DTYPE)
        recs["t"] = T_HIST + np.arange(k) * TF_FINE
        recs["o"], recs["c"] = o, c
        recs["h"], recs["l"] = np.maximum(o, c) * 1.001, np.minimum(o, c) * 0.999
        recs["v"] = 1.0
        recs["value"] = c
        recs["n"] = 6
        recs["flags"] = BACKFILLED
        out.append(recs)
    return out


def _frames(n: int, total: int) -> list[bytes]:
    """``total`` SIMPLE-format Upbit trade frames, round-robin over the ``n`` markets."""
    codes = _codes(n)
    rng = np.random.default_rng(13)
    per = total // n
    prices = (_bases(n) * np.exp(np.cumsum(rng.normal(0, 0.002, (per, n)), axis=0))).tolist()
    vols = rng.uniform(0.01, 2.0, (per, n)).tolist()
    out = []
    for k in range(per):
        ts0 = T_START * 1000 + k * STEP_MS
        for m in range(n):
            msg = trade_message(codes[m], ts0 + m, prices[k][m], vols[k][m], (k + m) % 2 == 0, k * n + m,
                                prices[max(k - 1, 0)][m])
            out.append(orjson.dumps({fields.TRADE.get(key, key): v for key, v in msg.items()}))
    return out


def _feed(cfg, base, n: int) -> CandleFeed:
    """The candle feed over ``base``'s rings, every market given its history through the REST merge."""
    feed = CandleFeed(base, cfg.ingest)
    assert feed.universe == list(base.markets) and not feed.table_full
    with feed.lock:
        for code, recs in zip(base.markets, _history(n)):
            feed.backfill.apply(code, feed.market_row[code], recs, T_START * 1000 - 1, int(recs["t"][0]))
        for ring in (*feed.rings.values(), feed.tape):
            ring.publish()
    return feed


def _workers(cfg, base) -> list[TimeframeWorker]:
    """The indicator process's workers (``procs.indicator``): candle rings opened read-only."""
    b, sh = base.instance, base.shm
    signals = SignalsTable.writer(b, sh.rows)
    sig_tf = cfg.signals.on(base)
    return [TimeframeWorker(CANDLES.open(b, tf, sh.rows, sh.capacity), INDICATORS.create(b, tf, sh.rows, sh.capacity),
                            cfg.indicator.periods(), signals if tf == sig_tf else None, cfg.signals.rules,
                            cfg.signals.rsi_max)
            for tf in sh.timeframes]


def _chunks(n: int):
    frames = _frames(n, TRADES_PER_ROUND * (ROUNDS + WARMUP_ROUNDS))
    return iter([frames[i:i + TRADES_PER_ROUND] for i in range(0, len(frames), TRADES_PER_ROUND)])


def _allocated(instance: str) -> int:
    """Bytes tmpfs has allocated to the instance's segments (pages written so far)."""
    return sum(os.stat("/dev/shm" + o).st_blocks * 512 for o in list_instance_objects(instance)
               if not o.startswith("sem:"))


def _cleanup(instance: str, *tables) -> None:
    for t in tables:
        t.close()
    unlink_instance(instance)
    assert list_instance_objects(instance) == [], "segments left in /dev/shm"


def _share(times: list[tuple[float, float]]) -> float:
    """CPU seconds of this thread / wall seconds over ``(cpu, wall)`` pairs."""
    return round(sum(c for c, _ in times) / sum(w for _, w in times), 3)


def _entry(n: int) -> dict:
    return RESULTS.setdefault(f"scale, {n} markets", {"group": "scale", "markets": n})


@pytest.mark.parametrize("n", MARKETS)
def test_ingest_scale(benchmark, instance, monkeypatch, n):
    cfg, base = _config(monkeypatch, instance, n)
    feed = _feed(cfg, base, n)
    chunks = _chunks(n)
    try:
        before, calls = feed.trades, []

        def run():
            apply, c0, t0 = feed.apply, time.thread_time(), time.perf_counter()
            for f in next(chunks):
                apply(parse_frame(f), time.monotonic_ns())
            calls.append((time.thread_time() - c0, time.perf_counter() - t0))

        benchmark.group = "scale"
        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
        assert feed.trades - before == TRADES_PER_ROUND * len(calls)
        assert not feed.drops and not feed.errors, dict(feed.drops)
    finally:
        _cleanup(instance, *feed.rings.values(), feed.tape)
    e = _entry(n)
    e["ingest_cpu_share"] = _share(calls[WARMUP_ROUNDS:])
    e["ingest_trades_per_s"] = TRADES_PER_ROUND / benchmark.stats.stats.median
    e["ingest_us_per_trade"] = benchmark.stats.stats.median / TRADES_PER_ROUND * 1e6


@pytest.mark.parametrize("n", MARKETS)
def test_pipeline_scale(benchmark, instance, monkeypatch, n):
    cfg, base = _config(monkeypatch, instance, n)
    feed = _feed(cfg, base, n)
    workers = _workers(cfg, base)
    chunks = _chunks(n)
    try:
        for w in workers:       # the indicator's start: every row's state rebuilt from the rings
            assert w.step() == n
        rounds: list[tuple[int, float]] = []
        times: list[tuple[float, float]] = []

        def run():
            apply, updated, t_ind = feed.apply, 0, 0.0
            c_start, t_start = time.thread_time(), time.perf_counter()
            chunk = next(chunks)
            for i in range(0, len(chunk), n):
                for f in chunk[i:i + n]:
                    apply(parse_frame(f), time.monotonic_ns())
                t0 = time.perf_counter()
                for w in workers:
                    if w.changed():
                        updated += w.step()
                t_ind += time.perf_counter() - t0
            rounds.append((updated, t_ind))
            times.append((time.thread_time() - c_start, time.perf_counter() - t_start))

        benchmark.group = "scale"
        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
        assert not feed.drops and not feed.errors, dict(feed.drops)
        steps = TRADES_PER_ROUND // n
        assert all(u == steps * n * len(workers) for u, _ in rounds), rounds   # every row, every step
        assert not any(w.seqlock_timeouts for w in workers)
        allocated = _allocated(instance)
    finally:
        sig = next(w.signals for w in workers if w.signals is not None)
        _cleanup(instance, *feed.rings.values(), feed.tape, *(w.candles for w in workers),
                 *(w.ind for w in workers), sig)
    measured = rounds[WARMUP_ROUNDS:]
    e = _entry(n)
    e["indicator_updates_per_s"] = float(np.median([u / t for u, t in measured]))
    e["indicator_us_per_update"] = 1e6 / e["indicator_updates_per_s"]
    e["pipeline_trades_per_s"] = TRADES_PER_ROUND / benchmark.stats.stats.median
    e["pipeline_us_per_trade"] = benchmark.stats.stats.median / TRADES_PER_ROUND * 1e6
    e["pipeline_cpu_share"] = _share(times[WARMUP_ROUNDS:])
    e["shm_bytes_allocated_after_pipeline"] = allocated


@pytest.mark.parametrize("n", MARKETS)
def test_shm_memory_scale(instance, monkeypatch, n):
    cfg, base = _config(monkeypatch, instance, n)
    sh = base.shm

    def sizes(rows: int) -> dict[str, int]:
        return table_sizes(sh.timeframes, rows, sh.capacity, STATUS_ROWS, trades_capacity=sh.trades_capacity,
                           orders_rows=sh.orders_rows, timeline_capacity=sh.timeline_capacity)

    expected = sizes(n)
    tables = [*(spec.create(instance, tf, n, sh.capacity) for spec in (CANDLES, INDICATORS) for tf in sh.timeframes),
              TRADES.create(instance, None, n, sh.trades_capacity),
              TIMELINE.create(instance, None, 1, sh.timeline_capacity),
              SymbolsTable.writer(instance, n), SignalsTable.writer(instance, n), TraderTable.writer(instance, 1),
              PositionsTable.writer(instance, n), OrdersTable.writer(instance, sh.orders_rows),
              StatusTable.writer(instance, STATUS_ROWS)]
    try:
        prefix = f"/smtm.{instance}."
        found = {o[len(prefix):]: os.stat("/dev/shm" + o).st_size
                 for o in list_instance_objects(instance) if not o.startswith("sem:")}
        assert found == expected
    finally:
        _cleanup(instance, *tables)
    # bytes per market row: what one more market adds to each table (0: a table that does not grow with markets)
    double = sizes(2 * n)
    per_market = {t: (double[t] - expected[t]) // n for t in expected}
    assert all((double[t] - expected[t]) % n == 0 for t in expected)
    e = _entry(n)
    e["shm_bytes"] = sum(expected.values())
    e["shm_bytes_by_table"] = expected
    e["shm_bytes_per_market_per_timeframe"] = per_market
    e["shm_fixed_bytes"] = {t: b for t, b in expected.items() if not per_market[t]}
