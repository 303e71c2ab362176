"""monitor — the read-only view: candles, EMA lines and health, drawn by ``render/``.

Maps ``candles.<tf>`` and ``indicators.<tf>`` **read-only** (a bug here cannot corrupt
the engine) and writes only its own row of ``status``. It never blocks on IPC: each
frame compares the global ``seq`` of the shown tables (one load each) and copies only
when something changed (≤ ``monitor.candles_shown`` candles, a few µs); a copy that
cannot get a consistent read keeps the previous frame. Tables that do not exist yet
(ingest not started) are retried once a second. It can be killed and restarted at any
time; no other process notices.

With ``DISPLAY`` set it opens a PyQt6 window (60 Hz render timer); without one (or with
``SMTM_MONITOR_OFFSCREEN=1``) it renders off-screen through EGL and writes
``<run dir>/monitor.png`` every ``monitor.snapshot_interval_s``.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from shm.ring import Overrun, SeqlockTimeout
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.status import PROCESSES, State, StatusRow, StatusTable
from shm.tables import CANDLE_DTYPE, open_candles, open_indicators

from render.text import format_krw

from .config import Config, process_start
from .signals import NEEDED, fired

log = logging.getLogger("smtm.monitor")


class MonitorSource:
    """What the chart shows, read from shared memory (see :mod:`render.app` for the interface)."""

    def __init__(self, cfg: Config, status_row: StatusRow | None = None, snapshot_path: Path | None = None):
        self.cfg = cfg
        self.timeframes = list(cfg.ingest.timeframes)
        self.tf = cfg.monitor.timeframe
        self.market = cfg.monitor.market
        self.n = cfg.monitor.candles_shown
        self.row = status_row
        self.snapshot_path = snapshot_path or (cfg.run_dir / "monitor.png")
        self.tables: dict[str, tuple] = {}
        self.status: StatusTable | None = None
        self._last_key = None
        self._last_attach = 0.0
        self._snapshot = self._empty()
        self.attach_error = ""

    # -- attaching ---------------------------------------------------------------------
    def _attach(self) -> None:
        now = time.monotonic()
        if now - self._last_attach < 1.0:
            return
        self._last_attach = now
        c = self.cfg
        for tf in self.timeframes:
            if tf in self.tables:
                continue
            try:
                self.tables[tf] = (open_candles(c.instance, tf, c.shm.rows, c.shm.capacity),
                                   open_indicators(c.instance, tf, c.shm.rows, c.shm.capacity))
                self.attach_error = ""
            except (SegmentNotFound, SegmentNotReady, LayoutMismatch) as e:
                self.attach_error = str(e).splitlines()[0]
        if self.status is None:
            try:
                self.status = StatusTable.open(c.instance)
            except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
                pass

    # -- the source interface ------------------------------------------------------------
    def poll(self) -> bool:
        if len(self.tables) < len(self.timeframes) or self.status is None:
            self._attach()
        t = self.tables.get(self.tf)
        key = (self.market, self.tf, t[0].global_seq if t else -1, t[1].global_seq if t else -1)
        if key == self._last_key:
            return False
        self._last_key = key
        return True

    @staticmethod
    def _empty():
        return (np.zeros(0, CANDLE_DTYPE), np.zeros(0), np.zeros(0), None, None, None, None)

    def snapshot(self):
        """(candles CANDLE_DTYPE (≤ n,), ema_fast, ema_slow, (bb_upper, bb_mid, bb_lower), rsi,
        (macd, macd_signal, macd_hist), buy-signal candle indices): float64 arrays aligned with
        the candles, oldest first (the argument list of ``CandleChart.set_data``)."""
        t = self.tables.get(self.tf)
        if t is None:
            return self._snapshot
        cand, ind = t
        row = cand.row_of(self.market)
        if row is None:
            self._snapshot = self._empty()
            return self._snapshot
        try:
            recs, cnt = cand.read_last(row, self.n, max_spins=2000)
            first = cnt - len(recs)
            fast = np.full(len(recs), np.nan)
            slow = np.full(len(recs), np.nan)
            cols = ("bb_upper", "bb_mid", "bb_lower", "rsi", "macd", "macd_signal", "macd_hist")
            vals = {c: np.full(len(recs), np.nan) for c in cols}
            irow = ind.row_of(self.market)
            if irow is not None and len(recs):
                try:
                    irecs, _ = ind.read_range(irow, first, cnt, max_spins=2000)
                except Overrun:
                    irecs = np.zeros(0, ind.dtype)
                k = len(irecs)
                ok = irecs["t"] == recs["t"][:k]   # alignment check: same candle start
                fast[:k] = np.where(ok, irecs["ema_fast"], np.nan)
                slow[:k] = np.where(ok, irecs["ema_slow"], np.nan)
                for c in cols:
                    vals[c][:k] = np.where(ok, irecs[c], np.nan)
            bands = (vals["bb_upper"], vals["bb_mid"], vals["bb_lower"])
            macd = (vals["macd"], vals["macd_signal"], vals["macd_hist"])
            marks = self._marks(recs, vals) if self.tf == self.cfg.signal_timeframe else None
            self._snapshot = (recs, fast, slow, bands, vals["rsi"], macd, marks)
        except SeqlockTimeout:
            self._last_key = None  # try again next frame, keep showing the previous one
        return self._snapshot

    def _marks(self, recs: np.ndarray, vals: dict) -> np.ndarray:
        """Indices of the shown closed candles where a configured buy rule fired: the rules of
        :mod:`procs.signals`, evaluated over the whole window at once (the newest candle is open
        and rules fire on close only)."""
        if len(recs) < 3:
            return np.zeros(0, int)
        prev = {k: vals[k][:-2] for k in NEEDED}
        cur = {k: vals[k][1:-1] for k in NEEDED}
        names = fired(self.cfg.signals.rules, prev, cur, recs["c"][1:-1], self.cfg.signals.rsi_max)
        return np.flatnonzero(names != "") + 1

    def select(self, market_step: int = 0, tf_step: int | None = 0, tf_index: int | None = None) -> None:
        markets = self.markets()
        if market_step and markets:
            i = markets.index(self.market) if self.market in markets else 0
            self.market = markets[(i + market_step) % len(markets)]
        if tf_index is not None and tf_index < len(self.timeframes):
            self.tf = self.timeframes[tf_index]
        elif tf_step:
            i = self.timeframes.index(self.tf)
            self.tf = self.timeframes[(i + tf_step) % len(self.timeframes)]
        self._last_key = None

    def markets(self) -> list[str]:
        t = self.tables.get(self.tf)
        names = [n for n in t[0].names() if n] if t else []
        return names or list(self.cfg.markets)

    def health(self) -> dict[str, str]:
        """Per process: heartbeat age such as ``0.2s``, or ``down`` / ``stale`` / ``-``."""
        out = {}
        if self.status is None:
            return {p: "-" for p in PROCESSES}
        now = time.monotonic_ns()
        for p in PROCESSES:
            try:
                r = self.status.read(p, max_spins=1000)
            except SeqlockTimeout:
                out[p] = "?"
                continue
            if r["pid"] == 0:
                out[p] = "-"
            elif r["state"] == State.STOPPED:
                out[p] = "down"
            else:
                age = (now - int(r["heartbeat_ns"])) / 1e9
                out[p] = f"{age:.1f}s" if age < 3 else f"stale {age:.0f}s"
        return out

    def status_text(self, stats) -> str:
        recs, fast, slow = self._snapshot[:3]
        cf, cs = self.cfg.indicator.ema_fast, self.cfg.indicator.ema_slow
        if len(recs):
            r = recs[-1]
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(r["t"])))
            line1 = (f"{self.market} {self.tf}  {format_krw(float(r['c']))} KRW   {when} UTC   "
                     f"O {format_krw(float(r['o']))}  H {format_krw(float(r['h']))}  L {format_krw(float(r['l']))}   "
                     f"EMA{cf} {format_krw(fast[-1])}  EMA{cs} {format_krw(slow[-1])}")
        else:
            line1 = f"{self.market} {self.tf}  waiting for data {self.attach_error}"[:160]
        health = self.health()
        lag = "-"
        extra = ""
        if self.status is not None:
            try:
                ing = self.status.read("ingest", max_spins=1000)
                if ing["state"] == State.DISCONNECTED:
                    extra = "  DISCONNECTED"
                lag = f"{int(ing['lag_ns']) / 1e6:.1f} ms" if ing["pid"] else "-"
            except SeqlockTimeout:
                pass
        beats = "  ".join(f"{p} {health.get(p, '-')}" for p in PROCESSES if p != "monitor")
        line2 = (f"heartbeat {beats}   ingest lag {lag}{extra}   "
                 f"{stats.loop_hz:.0f} Hz loop  {stats.fps:.0f} fps  draw {stats.max_draw_ms:.1f} ms")
        return line1 + "\n" + line2

    def report(self, stats) -> None:
        if self.row is None:
            return
        self.row.fps = stats.fps
        self.row.msgs_in = stats.ticks
        self.row.msgs_out = stats.frames
        self.row.beat(State.RUNNING)


def main(argv: list[str] | None = None) -> int:
    cfg, args = process_start("monitor", "VisPy monitor of the shared-memory rings", argv, lambda ap: ap.add_argument(
        "--offscreen", action="store_true", help="render off-screen even with a display"))
    if cfg is None:
        return 2
    row = StatusRow(StatusTable.writer(cfg.instance), "monitor")
    source = MonitorSource(cfg, row)
    mc = cfg.monitor
    offscreen = args.offscreen or os.environ.get("SMTM_MONITOR_OFFSCREEN") == "1" or not os.environ.get("DISPLAY")
    t0 = time.perf_counter()
    from render.app import run_offscreen, run_window  # imports VisPy (and Qt for the window)
    log.info("render imported in %.0f ms", (time.perf_counter() - t0) * 1e3)
    try:
        if offscreen:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            row.detail = f"offscreen {source.snapshot_path}"
            running = [True]

            def _stop(*_):
                running[0] = False
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
            log.info("no display: rendering off-screen, snapshots to %s", source.snapshot_path)
            return run_offscreen(source, fps=mc.headless_fps, size=(mc.width, mc.height), max_candles=mc.candles_shown,
                                 snapshot_interval_s=mc.snapshot_interval_s, should_run=lambda: running[0])
        row.detail = f"window on {os.environ.get('DISPLAY')}"
        return run_window(source, fps=mc.fps, size=(mc.width, mc.height), max_candles=mc.candles_shown,
                          title=f"SMTM-NG monitor [{cfg.instance}]")
    finally:
        row.stopped()


if __name__ == "__main__":
    raise SystemExit(main())
