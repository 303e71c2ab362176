"""The indicator engine: ``candles.<tf>`` → ``indicators.<tf>`` and the ``signals`` table,
incrementally (the indicator process's domain; writer of both).

Indicators (all as TA-Lib computes them, :mod:`procs.market.indicators`): EMA fast/slow, RSI
(Wilder), MACD line/signal/histogram, Bollinger Bands. For each row whose ``seq`` changed,
:class:`TimeframeWorker` reads only the candles it has not folded yet (normally the open candle,
or the one just closed plus the new open one), folds closed candles into the per-row state
(O(1) each), gives the open candle provisional values, and writes the results at the **same
indices** in ``indicators.<tf>`` (aligned 1:1 with the candles, same ``count``). On every
closed candle of the signal timeframe it evaluates the buy rules (:mod:`procs.market.signals`).

A row's state is rebuilt from what the candle ring holds on start, whenever the feed lapped the
worker (more than ``capacity`` candles behind), whenever history was rewritten (a gap backfill
bumps the row's ``rewrites``), and when the row was given to another market (its
``generation`` moved: the indicator row is reassigned and the signal row cleared).
"""
from __future__ import annotations

import numpy as np

from shm.ring import Overrun, RingTable, SeqlockTimeout
from shm.signals import SignalsTable
from shm.tables import CLOSED, INDICATOR_DTYPE

from .indicators import IndicatorSet
from .signals import SignalState, evaluate

_COLUMNS = INDICATOR_DTYPE.names[1:]


class RowState:
    """Indicator (and buy-signal) state of one market row over the closed candles before ``closed_n``."""

    __slots__ = ("closed_n", "ind", "signal")

    def __init__(self, start: int, periods: dict):
        self.closed_n = start
        self.ind = IndicatorSet(**periods)
        self.signal = SignalState()


class TimeframeWorker:
    """Keeps ``indicators.<tf>`` in step with ``candles.<tf>`` (and ``signals``, when given)."""

    def __init__(self, candles: RingTable, indicators: RingTable, periods: dict,
                 signals: SignalsTable | None = None, rules: tuple[str, ...] = (), rsi_max: float = 70.0):
        self.candles = candles
        self.ind = indicators
        self.periods = periods
        self.signals = signals      # written on candle close when this is the signal timeframe
        self.rules = rules
        self.rsi_max = rsi_max
        self.state: list[RowState | None] = [None] * candles.n_rows
        self.last_seqs = np.full(candles.n_rows, -1, dtype=np.int64)
        self.last_rewrites = candles.rewrites().astype(np.int64)
        # -1: the first step checks every row's name (a row may have changed hands while we were down)
        self.last_generations = np.full(candles.n_rows, -1, dtype=np.int64)
        self.assigned = [bool(n) for n in indicators.names()]   # our rows that have a market
        self.skipped: set[int] = set()   # rows the last step left for the next one (their values not written)
        self.last_gseq = -1
        self.rebuilds = 0
        self.records_out = 0
        self.seqlock_timeouts = 0

    def changed(self) -> bool:
        return self.candles.global_seq != self.last_gseq

    def step(self) -> int:
        """Process every row that changed since the last step; returns rows updated.

        Only rows whose ``seq`` moved are looked at: a row's history rewrite or reassignment is written
        inside its seqlock section, so it always moves the row's ``seq`` too."""
        self.last_gseq = self.candles.global_seq
        self.skipped.clear()
        ctrl = self.candles.control
        seqs = ctrl["seq"]
        rows = np.flatnonzero(seqs != self.last_seqs)
        if not len(rows):
            return 0
        updated = 0
        names = None
        for row, seq, rew, gen in zip(rows.tolist(), seqs[rows].tolist(), ctrl["rewrites"][rows].tolist(),
                                      ctrl["generation"][rows].tolist()):
            if rew != self.last_rewrites[row] or gen != self.last_generations[row]:
                self.state[row] = None  # history changed under us (backfill, reassigned row): rebuild
                self.last_rewrites[row] = rew
            if seq & 1:  # a write in progress: leave it for the next step
                self.skipped.add(row)
                continue
            if gen != self.last_generations[row] or not self.assigned[row]:
                names = names or self.candles.names()
                if not names[row]:   # a free row: looked at again when its seq moves (assigning it writes it)
                    self.last_seqs[row] = seq
                    continue
                self._follow_name(row, names[row], gen)
            try:
                if not self._update_row(row, gen):
                    self.skipped.add(row)
                    continue   # the row changed hands during the read: follow it next step
            except Overrun:
                self.state[row] = None  # lapped while reading: rebuild next time
                self.skipped.add(row)
                continue
            except SeqlockTimeout:
                self.seqlock_timeouts += 1  # the writer kept the row busy (a storm): tried again next step
                self.skipped.add(row)
                continue
            self.last_seqs[row] = seq
            updated += 1
        if updated:
            self.ind.publish()
        return updated

    def _follow_name(self, row: int, name: str, gen: int) -> None:
        """Give our row the candle row's market: assign it, or reset it if the row changed hands."""
        if not self.ind.name(row):
            self.ind.assign_row(name, row)   # no-op while a row its market left still holds the name
        elif self.ind.name(row) != name:
            self.ind.reassign_row(row, name)
            if self.signals is not None:
                self.signals.write_rows(row, np.zeros((), self.signals.DTYPE))
        self.last_generations[row] = gen
        # not named yet (the old row is renamed when its new market's candles are folded): tried again next time
        self.assigned[row] = self.ind.name(row) == name

    def _update_row(self, row: int, gen: int) -> bool:
        """Fold the row's new candles; False (nothing written) if the row changed hands meanwhile."""
        cnt = self.candles.count(row)
        st = self.state[row]
        if st is None or st.closed_n < cnt - self.candles.capacity or st.closed_n > cnt:
            st = self.state[row] = RowState(max(0, cnt - self.candles.capacity), self.periods)
            self.rebuilds += 1
        start = st.closed_n
        recs, cnt = self.candles.read_range(row, start)
        if self.candles.generation(row) != gen:
            self.state[row] = None
            self.last_generations[row] = -1
            return False
        n = len(recs)
        if n == 0:
            return True
        if start < self.ind.count(row) - self.ind.capacity:  # history shortened behind our window
            self.ind.reassign_row(row, self.ind.name(row))
        out = []
        ind = st.ind
        for j, (t, _o, _h, _l, c, _v, _value, _n, flags) in enumerate(recs.tolist()):
            if flags & CLOSED or start + j < cnt - 1:
                vals = ind.update(c)
                st.closed_n = start + j + 1
                if self.signals is not None:
                    self._signal(row, st.signal, t, c, vals)
            else:
                vals = ind.peek(c)
            out.append((t, *vals))
        have = self.ind.count(row)
        if n == 1 and start <= have <= start + 1:
            self.ind.write(row, start, out[0])   # the usual step (the open candle again): one struct-packed copy
        else:
            self.ind.write_many(row, start, out, truncate=start + n < have)
        self.records_out += n
        return True

    def _signal(self, row: int, sig: SignalState, t: int, close: float, vals: tuple) -> None:
        changed = evaluate(sig, t, close, dict(zip(_COLUMNS, vals)), self.rules, self.rsi_max)
        if changed or int(self.signals.rows["evaluated_t"][row]) != t:
            self.signals.write_rows(row, (self.candles.name(row).encode(), 1 if sig.active else 0,
                                          sig.rule.encode(), sig.since_t, sig.price, t))
