"""indicator — candles → indicators, incrementally (the only writer of ``indicators.<tf>``).

Indicators (all as TA-Lib computes them, :mod:`procs.indicators`): EMA fast/slow, RSI
(Wilder), MACD line/signal/histogram, Bollinger Bands (SMA middle, population standard
deviation); periods and multipliers from ``[indicator]``. On every closed candle of the
signal timeframe it evaluates the buy rules (:mod:`procs.signals`) and keeps the ``signals``
table (the buyable set) current.

Woken by ingest with the spin-then-park strategy (:mod:`shm.wake`): it spins on the
global ``seq`` of every ``candles.<tf>`` ring for ``indicator.spin_us``, then parks on
its semaphore. For each row whose ``seq`` changed it reads only the candles it has not
folded yet (normally the open candle, or the one just closed plus the new open one),
folds closed candles into the per-row indicator state (O(1) each) and gives the open candle
provisional values, and writes the results at the **same indices** in
``indicators.<tf>`` (aligned 1:1 with the candles, same ``count``).

On start, whenever ingest has lapped it (more than ``capacity`` candles behind), and
whenever ingest rewrote history (a gap backfill bumps the row's ``rewrites`` counter), a
row's state is rebuilt from what the candle ring holds: EMA values then warm up from the
ring's oldest candle.
"""
from __future__ import annotations

import logging
import signal
import time

import numpy as np

from shm.ring import Overrun, RingTable
from shm.segment import SegmentNotFound, SegmentNotReady
from shm.status import State, StatusRow, StatusTable
from shm.signals import SignalsTable
from shm.tables import CLOSED, INDICATOR_DTYPE, create_indicators, open_candles
from shm.wake import SpinThenPark, open_semaphore

from .config import Config, process_start
from .indicators import IndicatorSet
from .signals import SignalState, evaluate

log = logging.getLogger("smtm.indicator")


class RowState:
    """Indicator (and buy-signal) state of one market row over the closed candles before ``closed_n``."""

    __slots__ = ("closed_n", "ind", "signal")

    def __init__(self, start: int, params: dict):
        self.closed_n = start
        self.ind = IndicatorSet(**params)
        self.signal = SignalState()


_COLUMNS = INDICATOR_DTYPE.names[1:]


class TimeframeWorker:
    """Keeps ``indicators.<tf>`` in step with ``candles.<tf>``."""

    def __init__(self, candles: RingTable, indicators: RingTable, params: dict,
                 signals: SignalsTable | None = None, rules: tuple[str, ...] = (), rsi_max: float = 70.0):
        self.candles = candles
        self.ind = indicators
        self.params = params
        self.signals = signals      # written on candle close when this is the signal timeframe
        self.rules = rules
        self.rsi_max = rsi_max
        self.state: list[RowState | None] = [None] * candles.n_rows
        self.last_seqs = np.full(candles.n_rows, -1, dtype=np.int64)
        self.last_rewrites = candles.rewrites().astype(np.int64)
        self.last_gseq = -1
        self.rebuilds = 0
        self.records_out = 0

    def changed(self) -> bool:
        return self.candles.global_seq != self.last_gseq

    def step(self) -> int:
        """Process every row that changed since the last step; returns rows updated."""
        self.last_gseq = self.candles.global_seq
        seqs = self.candles.seqs().astype(np.int64)
        rewrites = self.candles.rewrites().astype(np.int64)
        for row in np.flatnonzero(rewrites != self.last_rewrites):
            self.state[int(row)] = None  # history changed under us (backfill): rebuild the row
        self.last_rewrites = rewrites
        rows = np.flatnonzero(seqs != self.last_seqs)
        updated = 0
        names = None
        for row in rows:
            row = int(row)
            if seqs[row] & 1:  # a write in progress: leave it for the next step
                continue
            if not self.ind.name(row):
                names = names or self.candles.names()
                if not names[row]:
                    continue
                self.ind.assign_row(names[row], row)
            try:
                self._update_row(row)
            except Overrun:
                self.state[row] = None  # lapped while reading: rebuild next time
                continue
            self.last_seqs[row] = seqs[row]
            updated += 1
        if updated:
            self.ind.publish()
        return updated

    def _update_row(self, row: int) -> None:
        cnt = self.candles.count(row)
        st = self.state[row]
        if st is None or st.closed_n < cnt - self.candles.capacity:
            st = self.state[row] = RowState(max(0, cnt - self.candles.capacity), self.params)
            self.rebuilds += 1
        start = st.closed_n
        recs, cnt = self.candles.read_range(row, start)
        n = len(recs)
        if n == 0:
            return
        out = np.empty(n, dtype=INDICATOR_DTYPE)
        closes = recs["c"].tolist()
        flags = recs["flags"].tolist()
        ind = st.ind
        ts = recs["t"].tolist()
        for j in range(n):
            c = closes[j]
            if flags[j] & CLOSED or start + j < cnt - 1:
                vals = ind.update(c)
                out[j] = (ts[j], *vals)
                st.closed_n = start + j + 1
                if self.signals is not None:
                    self._signal(row, st.signal, ts[j], c, vals)
            else:
                out[j] = (ts[j], *ind.peek(c))
        self.ind.write_many(row, start, out)
        self.records_out += n

    def _signal(self, row: int, sig: SignalState, t: int, close: float, vals: tuple) -> None:
        changed = evaluate(sig, t, close, dict(zip(_COLUMNS, vals)), self.rules, self.rsi_max)
        if changed or int(self.signals.rows["evaluated_t"][row]) != t:
            self.signals.write_rows(row, (self.candles.name(row).encode(), 1 if sig.active else 0,
                                          sig.rule.encode(), sig.since_t, sig.price, t))


def indicator_params(cfg: Config) -> dict:
    """IndicatorSet keyword arguments from the ``[indicator]`` configuration."""
    i = cfg.indicator
    return dict(ema_fast=i.ema_fast, ema_slow=i.ema_slow, rsi_period=i.rsi_period, macd_fast=i.macd_fast,
                macd_slow=i.macd_slow, macd_signal=i.macd_signal, bb_period=i.bb_period, bb_k=i.bb_k)


class IndicatorProcess:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.status = StatusTable.writer(cfg.instance)
        self.row = StatusRow(self.status, "indicator")
        self.running = True
        self.workers: list[TimeframeWorker] = []

    def _attach(self) -> bool:
        """Attach every candles ring (read-only) once ingest has created them."""
        c = self.cfg
        try:
            cands = [open_candles(c.instance, tf, c.shm.rows, c.shm.capacity) for tf in c.ingest.timeframes]
        except (SegmentNotFound, SegmentNotReady) as e:
            self.row.detail = f"waiting for ingest: {e}"[:88]
            return False
        signals = SignalsTable.writer(c.instance, c.shm.rows)
        self.workers = [TimeframeWorker(cand, create_indicators(c.instance, tf, c.shm.rows, c.shm.capacity),
                                        indicator_params(c), signals if tf == c.signal_timeframe else None,
                                        c.signals.rules, c.signals.rsi_max)
                        for tf, cand in zip(c.ingest.timeframes, cands)]
        log.info("attached to %d candle tables", len(self.workers))
        return True

    def stop(self, *_):
        self.running = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        ic = self.cfg.indicator
        self.row.beat(State.STARTING)
        while self.running and not self._attach():
            self.row.beat(State.STARTING)
            time.sleep(0.2)
        waiter = SpinThenPark(open_semaphore(self.cfg.instance, "indicator"), self.row,
                              spin_us=ic.spin_us, park_timeout_s=ic.park_timeout_s)
        workers = self.workers

        def changed() -> bool:
            for w in workers:
                if w.candles.global_seq != w.last_gseq:
                    return True
            return False

        last_beat = 0.0
        while self.running:
            if waiter.wait(changed):
                for w in workers:
                    if w.changed():
                        self.row.msgs_in += w.step()
            now = time.monotonic()
            if now - last_beat >= 0.2:
                self.row.msgs_out = sum(w.records_out for w in workers)
                self.row.detail = f"parks={waiter.parks} wakeups={waiter.wakeups} rebuilds={sum(w.rebuilds for w in workers)}"
                self.row.beat(State.RUNNING)
                last_beat = now
        self.row.stopped()
        return 0


def main(argv: list[str] | None = None) -> int:
    cfg, _ = process_start("indicator", "candles → indicators", argv)
    return 2 if cfg is None else IndicatorProcess(cfg).run()


if __name__ == "__main__":
    raise SystemExit(main())
