"""indicator — candles → indicators and buy signals, incrementally (wiring only).

Attaches every ``candles.<tf>`` ring read-only once ingest has created them, and keeps
``indicators.<tf>`` and the ``signals`` table with :mod:`procs.market.analytics`. Woken by ingest
with the adaptive spin-then-park strategy (:class:`shm.wake.PhasedWait`): it spins on the global ``seq`` of
the candle rings for at most ``indicator.spin_us`` — as long as writes have lately been coming that soon, and
not at all for a while after its core was taken away — then parks on its semaphore (a SIGTERM ends the park
at once).
Its values are for the monitor, the gateway and SNAPSHOT.GET: the trader computes the same values itself
from the candles (:mod:`procs.trading.inputs`), so no decision waits for this process.
"""
from __future__ import annotations

from shm.ring import Overrun, SeqlockTimeout
from shm.segment import SegmentNotFound, SegmentNotReady
from shm.signals import SignalsTable
from shm.tables import CANDLES, INDICATORS, TRADES
from shm.wake import PhasedWait, open_semaphore

from .market.analytics import TimeframeWorker
from .runtime.config import BaseConfig, IndicatorConfig, SignalsConfig
from .runtime.process import Process, start
from .runtime.stamps import LatencyLog


class IndicatorProcess(Process):
    name = "indicator"

    def __init__(self, base: BaseConfig, cfg: IndicatorConfig, signals: SignalsConfig, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.signals_cfg = signals
        self.workers: list[TimeframeWorker] = []
        self.latency = LatencyLog(base, self.name)
        self._tape = None            # the trade tape, read for the latency stamps only
        self._tape_seen: dict[int, int] = {}
        self.waiter = PhasedWait(open_semaphore(base.instance, self.name), self.row, spin_us=cfg.spin_us,
                                   park_timeout_s=cfg.park_timeout_s)

    def _attach(self) -> bool:
        """Attach every candles ring (read-only) once ingest has created them."""
        b = self.base
        try:
            cands = [CANDLES.open(b.instance, tf, b.shm.rows, b.shm.capacity) for tf in b.shm.timeframes]
        except (SegmentNotFound, SegmentNotReady) as e:
            self.row.detail = f"waiting for ingest: {e}"[:88]
            return False
        signals = SignalsTable.writer(b.instance, b.shm.rows)
        signal_tf = self.signals_cfg.on(b)
        self.workers = [TimeframeWorker(cand, INDICATORS.create(b.instance, tf, b.shm.rows, b.shm.capacity),
                                        self.cfg.periods(), signals if tf == signal_tf else None,
                                        self.signals_cfg.rules, self.signals_cfg.rsi_max)
                        for tf, cand in zip(b.shm.timeframes, cands)]
        if self.latency.enabled:
            try:   # ingest creates the tape after the candle rings
                self._tape = TRADES.open(b.instance, None, b.shm.rows, b.shm.trades_capacity)
            except (SegmentNotFound, SegmentNotReady) as e:
                self.row.detail = f"waiting for ingest: {e}"[:88]
                return False
            self._tape_seen = {r: self._tape.count(r) for r in range(b.shm.rows)}
        self.log.info("attached to %d candle tables", len(self.workers))
        return True

    def on_start(self) -> None:
        while not self.stopping and not self._attach():
            self.idle(0.2)

    def _changed(self) -> bool:
        return any(w.candles.global_seq != w.last_gseq for w in self.workers)

    def on_tick(self) -> None:
        if self.waiter.wait(self._changed):
            # ingest writes a trade's candles before its tape record: every trade on the tape now is in what
            # the steps below read
            counts = self._tape.counts().tolist() if self._tape is not None else None
            updated = 0
            for w in self.workers:
                if counts is not None or w.changed():   # stamping: every row whose seq moved, published or not
                    updated += w.step()
            self.row.msgs_in += updated
            if counts is not None:
                self._stamp(counts, set().union(*(w.skipped for w in self.workers)))

    def _stamp(self, counts: list[int], skipped: set[int]) -> None:
        """``frame -> indicator values`` for every trade taped before the steps, but on a row a step left for
        the next one (a write in progress, a seqlock timeout): those are stamped when it is done."""
        now = self.latency.now_ns()
        stage = self.latency.stage("frame -> indicator values")
        for row, cnt in enumerate(counts):
            seen = self._tape_seen.get(row, 0)
            if row in skipped:
                continue
            if cnt > seen:
                try:
                    recs, _ = self._tape.read_range(row, max(seen, cnt - self._tape.capacity), cnt)
                except (Overrun, SeqlockTimeout):
                    recs = None
                if recs is not None:
                    stage.add_since(recs["recv_ns"], now)
                self._tape_seen[row] = cnt
            elif cnt < seen:   # the row was reassigned: its count restarted
                self._tape_seen[row] = cnt

    def on_stop(self) -> None:
        self.latency.write()

    def on_beat(self) -> None:
        self.row.msgs_out = sum(w.records_out for w in self.workers)
        self.row.detail = (f"parks={self.waiter.parks} wakeups={self.waiter.wakeups} "
                           f"rebuilds={sum(w.rebuilds for w in self.workers)}")


def main(argv: list[str] | None = None) -> int:
    cfg, _ = start("indicator", "candles → indicators", argv)
    return 2 if cfg is None else IndicatorProcess(cfg.base, cfg.indicator, cfg.signals).run()


if __name__ == "__main__":
    raise SystemExit(main())
