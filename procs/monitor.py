"""monitor — the read-only view (wiring only): :mod:`procs.views.chart_source` reads shared
memory, ``render/`` draws it.

With ``DISPLAY`` set it opens a PyQt6 window (60 Hz render timer); without one (or with
``--offscreen`` / ``SMTM_MONITOR_OFFSCREEN=1``) it renders off-screen through EGL and writes
``<run dir>/monitor.png`` every ``monitor.snapshot_interval_s``. It writes only its own status
row, and can be killed and restarted at any time; no other process notices. The only module
outside ``render/`` that may import it (and so VisPy and Qt).
"""
from __future__ import annotations

import os
import time

from .runtime.config import BaseConfig, IndicatorConfig, MonitorConfig, SignalsConfig
from .runtime.process import Process, start
from .runtime.stamps import LatencyLog
from .views.chart_source import ShmChartSource


class MonitorProcess(Process):
    name = "monitor"

    def __init__(self, base: BaseConfig, cfg: MonitorConfig, indicator: IndicatorConfig, signals: SignalsConfig,
                 offscreen: bool, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.offscreen = offscreen
        self.source = ShmChartSource(base, cfg, indicator, signals, self.report)
        self.latency = LatencyLog(base, self.name)
        self._last_frame_ns = 0

    def on_frame(self, draw_ms: float) -> None:
        """Latency samples (``[latency] samples``): each frame's draw time and the time since the last frame."""
        now = time.monotonic_ns()
        self.latency.stage("monitor draw").add(draw_ms * 1000.0)
        if self._last_frame_ns:
            self.latency.stage("monitor frame interval").add((now - self._last_frame_ns) / 1000.0)
        self._last_frame_ns = now

    def report(self, stats) -> None:
        """The render loop's figures (twice a second, and at the first frame) → the status row."""
        self.row.fps, self.row.msgs_in, self.row.msgs_out = stats.fps, stats.ticks, stats.frames
        self.heartbeat(force=True)

    def on_tick(self) -> None:  # the render loops below are the work loop
        self.idle(self.heartbeat_s)

    def run_loop(self) -> None:
        t0 = time.perf_counter()
        from render.app import resolve_present, run_offscreen, run_window  # imports VisPy (and Qt for the window)
        self.log.info("render imported in %.0f ms", (time.perf_counter() - t0) * 1e3)
        c = self.cfg
        running = lambda: not self.stopping
        on_frame = self.on_frame if self.latency.enabled else None
        if self.offscreen:
            self.base.run_dir.mkdir(parents=True, exist_ok=True)
            self.row.detail = f"offscreen {self.source.snapshot_path}"
            self.log.info("no display: rendering off-screen, snapshots to %s", self.source.snapshot_path)
            run_offscreen(self.source, fps=c.headless_fps, size=(c.width, c.height), max_candles=c.candles_shown,
                          snapshot_interval_s=c.snapshot_interval_s, should_run=running, on_frame=on_frame)
        else:
            present = resolve_present(c.present)
            self.row.detail = f"window on {os.environ.get('DISPLAY')} ({present})"
            self.log.info("window on %s, frames %s", os.environ.get("DISPLAY"),
                          "drawn by a QOpenGLWidget" if present == "gl" else "rendered off-screen and painted")
            run_window(self.source, fps=c.fps, size=(c.width, c.height), max_candles=c.candles_shown,
                       title=f"SMTM-NG monitor [{self.base.instance}]", should_run=running, on_frame=on_frame,
                       present=present)

    def on_stop(self) -> None:
        self.latency.write()


def main(argv: list[str] | None = None) -> int:
    cfg, args = start("monitor", "VisPy monitor of the shared-memory rings", argv, lambda ap: ap.add_argument(
        "--offscreen", action="store_true", help="render off-screen even with a display"))
    if cfg is None:
        return 2
    offscreen = args.offscreen or os.environ.get("SMTM_MONITOR_OFFSCREEN") == "1" or not os.environ.get("DISPLAY")
    return MonitorProcess(cfg.base, cfg.monitor, cfg.indicator, cfg.signals, offscreen).run()


if __name__ == "__main__":
    raise SystemExit(main())
