"""The monitor's data side: a read-only view of shared memory that gives the chart what to draw.

Maps ``candles.<tf>`` and ``indicators.<tf>`` **read-only** (a bug here cannot corrupt the
engine). It never blocks on IPC: each frame compares the global ``seq`` of the shown tables (one
load each) and copies only when something changed (≤ ``monitor.candles_shown`` candles, a few
µs); a copy that cannot get a consistent read keeps the previous frame. Tables that do not exist
yet (ingest not started) are retried once a second.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from render.snapshot import ChartSnapshot, FrameStatsLike, TradingView
from render.text import format_krw
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.seqlock import SeqlockTimeout
from shm.status import State, StatusTable
from shm.tables import CANDLE_DTYPE, CANDLES, INDICATORS, aligned_indicators

from ..market.signals import NEEDED, fired
from ..runtime.config import BaseConfig, IndicatorConfig, MonitorConfig, SignalsConfig
from ..runtime.roster import STATUS_ROWS
from .trading_source import ShmTradingSource

#: indicator columns the chart shows
_SHOWN = ("ema_fast", "ema_slow", "bb_upper", "bb_mid", "bb_lower", "rsi", "macd", "macd_signal", "macd_hist")


class ShmChartSource:
    """What the chart shows, read from shared memory (a :class:`render.snapshot.ChartSource`).

    ``on_report(stats)`` receives the render loop's figures (the monitor's heartbeat; None in tests)."""

    def __init__(self, base: BaseConfig, cfg: MonitorConfig, indicator: IndicatorConfig, signals: SignalsConfig,
                 on_report: Callable[[FrameStatsLike], None] | None = None, snapshot_path: Path | None = None):
        self.base, self.cfg, self.indicator, self.signals = base, cfg, indicator, signals
        self.signal_timeframe = signals.on(base)
        self.timeframes = list(base.shm.timeframes)
        self.tf = cfg.timeframe
        self.market = cfg.market
        self.n = cfg.candles_shown
        self.on_report = on_report
        self.snapshot_path = snapshot_path or (base.run_dir / "monitor.png")
        self.tables: dict[str, tuple] = {}
        self.status: StatusTable | None = None
        self._last_key = None
        self._last_attach = 0.0
        i = indicator
        self.labels = {"rsi_label": f"RSI {i.rsi_period}",
                       "macd_label": f"MACD {i.macd_fast} {i.macd_slow} {i.macd_signal}"}
        self._snapshot = self._empty()
        self.attach_error = ""
        self.trading = ShmTradingSource(base)

    # -- attaching ---------------------------------------------------------------------
    def _attach(self) -> None:
        now = time.monotonic()
        if now - self._last_attach < 1.0:
            return
        self._last_attach = now
        b = self.base
        for tf in self.timeframes:
            if tf in self.tables:
                continue
            try:
                self.tables[tf] = (CANDLES.open(b.instance, tf, b.shm.rows, b.shm.capacity),
                                   INDICATORS.open(b.instance, tf, b.shm.rows, b.shm.capacity))
                self.attach_error = ""
            except (SegmentNotFound, SegmentNotReady, LayoutMismatch) as e:
                self.attach_error = str(e).splitlines()[0]
        if self.status is None:
            with contextlib.suppress(SegmentNotFound, SegmentNotReady, LayoutMismatch):
                self.status = StatusTable.open(b.instance, STATUS_ROWS)
                self.trading.status = self.status

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

    def snapshot(self) -> ChartSnapshot:
        """The selected market and timeframe: the last ``monitor.candles_shown`` candles with their
        indicators (aligned by index and checked by candle start) and buy-signal marks."""
        t = self.tables.get(self.tf)
        if t is None:
            return self._snapshot
        cand, ind = t
        try:
            got = cand.read_last_of(self.market, self.n, max_spins=2000)
            if got is None:
                self._snapshot = self._empty()
                return self._snapshot
            recs, cnt = got
            vals = aligned_indicators(ind, self.market, recs, cnt, _SHOWN, max_spins=2000)
            marks = self._marks(recs, vals) if self.tf == self.signal_timeframe else np.zeros(0, int)
            self._snapshot = ChartSnapshot(recs, marks=marks, **vals, **self.labels)
        except SeqlockTimeout:
            self._last_key = None  # try again next frame, keep showing the previous one
        return self._snapshot

    def poll_trading(self) -> bool:
        return self.trading.poll(self.market)

    def trading_view(self) -> TradingView:
        """The trading engine's state, with the selected market as the shown one (its last price
        from the trades ring, else the close of its newest candle)."""
        view = self.trading.view(self.market)
        recs = self._snapshot.candles
        if view.last_price != view.last_price and len(recs):
            view = replace(view, last_price=float(recs["c"][-1]))
        return view

    def _empty(self) -> ChartSnapshot:
        return ChartSnapshot(np.zeros(0, CANDLE_DTYPE), **self.labels)

    def _marks(self, recs: np.ndarray, vals: dict) -> np.ndarray:
        """Indices of the shown closed candles where a configured buy rule fired: the rules of
        :mod:`procs.market.signals`, evaluated over the whole window at once (the newest candle is open
        and rules fire on close only)."""
        if len(recs) < 3:
            return np.zeros(0, int)
        prev = {k: vals[k][:-2] for k in NEEDED}
        cur = {k: vals[k][1:-1] for k in NEEDED}
        names = fired(self.signals.rules, prev, cur, recs["c"][1:-1], self.signals.rsi_max)
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
        return names or list(self.base.markets)

    def health(self) -> dict[str, str]:
        """Per process: heartbeat age such as ``0.2s``, or ``down`` / ``stale`` / ``-``."""
        out = {}
        if self.status is None:
            return dict.fromkeys(STATUS_ROWS, "-")
        now = time.monotonic_ns()
        for p in STATUS_ROWS:
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
        snap = self._snapshot
        recs, fast, slow = snap.candles, snap.ema_fast, snap.ema_slow
        cf, cs = self.indicator.ema_fast, self.indicator.ema_slow
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
        beats = "  ".join(f"{p} {health.get(p, '-')}" for p in STATUS_ROWS if p != "monitor")
        line2 = (f"heartbeat {beats}   ingest lag {lag}{extra}   "
                 f"{stats.loop_hz:.0f} Hz loop  {stats.fps:.0f} fps  draw {stats.max_draw_ms:.1f} ms")
        return line1 + "\n" + line2

    def report(self, stats: FrameStatsLike) -> None:
        if self.on_report is not None:
            self.on_report(stats)
