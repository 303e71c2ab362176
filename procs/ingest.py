"""ingest — Upbit trades → candles in shared memory (wiring only).

The WebSocket session (:mod:`procs.upbit.websocket`) receives frames on its worker thread; each
is parsed by the venue adapter (:mod:`procs.upbit.parsing`) and applied by the candle feed
(:mod:`procs.market.feed`, the single writer of ``candles.<tf>``), which wakes the indicator. The
process's own loop (:mod:`procs.runtime.process`) follows the ``symbols`` table (a new universe is
resubscribed completely: Upbit replaces a subscription, it never adds to it), keeps the
connection alive and beats its status row; a third thread runs the REST repairs (outside the
feed's write lock), so a slow REST stalls neither the stream nor the heartbeat.
With ``ingest.record`` every received frame is also written to rotating compressed files.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.status import State
from shm.symbols import SymbolsTable
from shm.wake import Waker

from .market.feed import CandleFeed
from .runtime.config import BaseConfig, IngestConfig, UpbitConfig
from .runtime.endpoints import UpbitUrls
from .runtime.process import Process, start
from .runtime.roster import WAKE_CONSUMERS
from .runtime.stamps import LatencyLog
from .upbit.parsing import parse_frame
from .upbit.recorder import Recorder
from .upbit.rest import RateLimiter, RestClient
from .upbit.websocket import WebSocketSession


class IngestProcess(Process):
    name = "ingest"

    def __init__(self, base: BaseConfig, upbit: UpbitConfig, cfg: IngestConfig, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.heartbeat_s = cfg.heartbeat_s
        self.urls = UpbitUrls(upbit.ws_url, upbit.rest_url, base.run_dir)
        self.rest = RestClient(self.urls.rest, RateLimiter(clock=self.clock.monotonic))
        self.symbols: SymbolsTable | None = None
        self.symbols_version = -1
        self.waker = Waker(base.instance, self.status, list(WAKE_CONSUMERS["ingest"]))
        self.feed = CandleFeed(base, cfg, fetch=self.rest.candle_history, wake=self.waker.wake, clock=self.clock,
                               universe=self._read_universe())
        self.latency = LatencyLog(base, self.name)
        self._to_shm = self.latency.stage("frame -> candle in shm") if self.latency.enabled else None
        self.recorder = None
        if cfg.record:
            self.recorder = Recorder(Path(cfg.record_dir) if cfg.record_dir else base.run_dir / "recordings",
                                     cfg.record_rotate_s, cfg.record_rotate_mb)
        self.session = WebSocketSession(self.urls.ws, cfg, subscription=self.subscription, on_frame=self.on_frame,
                                        on_open=self.feed.warm_up, on_resume=self.feed.schedule_gap_repairs,
                                        stop=self._stop, clock=self.clock)

    def subscription(self) -> str:
        """The complete subscription request (Upbit replaces, never adds)."""
        codes = list(self.feed.universe)
        req = [{"ticket": f"smtm-{uuid.uuid4()}"}, {"type": "trade", "codes": codes, "is_only_realtime": True}]
        if self.cfg.subscribe_ticker:
            req.append({"type": "ticker", "codes": codes, "is_only_realtime": True})
        req.append({"format": self.cfg.format})
        return json.dumps(req)

    def on_frame(self, data: bytes | str) -> None:
        """WebSocket thread: one frame."""
        recv_ns = time.monotonic_ns()
        self.row.msgs_in += 1
        if self.recorder is not None:
            self.recorder.write(self.clock.time_ns() // 1_000_000, data)
        n = self.feed.apply(parse_frame(data), recv_ns)
        if n and self._to_shm is not None:   # written, published and the consumers woken
            self._to_shm.add((time.monotonic_ns() - recv_ns) / 1000.0, n)

    def _read_universe(self) -> list[str] | None:
        """The symbols table's universe if the table exists and moved since last read, else None."""
        if self.symbols is None:
            try:
                self.symbols = SymbolsTable.open(self.base.instance, self.base.shm.rows)
            except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
                return None
        ver = self.symbols.version
        if ver == self.symbols_version:
            return None
        self.symbols_version = ver
        return self.symbols.universe() or None

    # -- lifecycle ----------------------------------------------------------------------------
    def on_start(self) -> None:
        self.set_state(State.DISCONNECTED)  # until the session connects
        self.start_worker(self.session.run, "websocket")
        self.start_worker(self._repairs, "repairs")
        self.log.info("connecting to %s for %d markets", self.urls.describe(), len(self.feed.universe))

    def on_tick(self) -> None:
        codes = self._read_universe()
        changed = self.feed.set_universe(codes) if codes else self.feed.retry_universe()
        if changed:
            self.log.info("universe version %d: %d markets; resubscribing", self.symbols_version,
                          len(self.feed.universe))
            self.session.resubscribe()
        self.session.tick()
        self.set_state(State.RUNNING if self.session.connected else State.DISCONNECTED)
        self.idle(self.heartbeat_s)

    def _repairs(self) -> None:
        """Worker: REST repairs, off the WebSocket thread and off the heartbeat (a slow REST stalls
        neither the stream nor the status row)."""
        while not self.clock.wait(self._stop, 0.05):
            if self.session.connected:
                self.feed.run_repairs()

    def on_beat(self) -> None:
        f, row = self.feed, self.row
        row.msgs_out, row.dropped, row.lag_ns = f.trades, sum(f.drops.values()), f.lag_ns
        row.errors, row.reconnects = f.errors + self.session.errors, self.session.reconnects
        full = f" TABLE FULL: {len(f.table_full)} waiting" if f.table_full else ""
        row.detail = (f"{'connected' if self.session.connected else 'disconnected'} trades={f.trades} "
                      f"dup={f.duplicates} repairs={f.backfill.repairs}{full}")

    def on_stop_requested(self) -> None:
        self.session.abort()

    def on_stop(self) -> None:
        for t in self._workers:
            t.join(timeout=2)
        if self.recorder is not None:
            self.recorder.close()
            self.log.info("recorded %d frames to %s", self.recorder.frames, ", ".join(map(str, self.recorder.files)))
        self.waker.close()
        self.latency.write()
        self.log.info("stopped: %d trades, drops %s, repairs %d", self.feed.trades, dict(self.feed.drops),
                      self.feed.backfill.repairs)


def main(argv: list[str] | None = None) -> int:
    cfg, _ = start("ingest", "Upbit trades → shared-memory candles", argv)
    return 2 if cfg is None else IngestProcess(cfg.base, cfg.upbit, cfg.ingest).run()


if __name__ == "__main__":
    raise SystemExit(main())
