"""Running the chart: a PyQt6 window with a render timer, or off-screen through EGL.

Both modes drive the same :class:`render.chart.CandleChart` from a
:class:`render.snapshot.ChartSource` (the monitor's read-only view of shared memory,
``procs.views.chart_source``): ``poll()`` says whether anything shown changed, ``snapshot()``
gives a :class:`~render.snapshot.ChartSnapshot`, ``poll_trading()``/``trading_view()`` the same for
the trading engine's :class:`~render.snapshot.TradingView`, ``status_text``/``report`` the status line and
the heartbeat, ``select`` the keyboard navigation, ``snapshot_path`` where the PNG goes.

* :func:`run_window` — VisPy on PyQt6. A timer at ``fps`` polls; buffers are touched and a
  redraw requested only when ``poll()`` says something changed (dirty flag); the status
  line is refreshed twice a second. Keys: ←/→ market, ↑/↓ or 1–9 timeframe.
* :func:`run_offscreen` — no display: VisPy's EGL backend (``EGL_PLATFORM=surfaceless``,
  no X, no Qt), rendering at ``headless_fps`` when something changed and writing a PNG
  snapshot every ``snapshot_interval_s`` (atomically: write then rename).

Qt is only imported in window mode: with no display Qt aborts the process.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FrameStats:
    """Render-loop figures for the status line and the status row."""
    ticks: int = 0          # timer ticks (loop iterations)
    frames: int = 0         # frames drawn
    loop_hz: float = 0.0    # ticks per second, last second
    fps: float = 0.0        # frames drawn per second, last second
    draw_ms: float = 0.0    # last frame's draw (or render) time
    max_draw_ms: float = 0.0
    #: called after every frame with its draw (or render) time in ms (the monitor's latency samples)
    on_frame: Callable[[float], None] | None = None
    _t0: float = field(default_factory=time.perf_counter)
    _ticks0: int = 0
    _frames0: int = 0

    def frame_done(self, draw_ms: float) -> None:
        """One frame drawn in ``draw_ms``."""
        self.frames += 1
        self.draw_ms = draw_ms
        self.max_draw_ms = max(self.max_draw_ms, draw_ms)
        if self.on_frame is not None:
            self.on_frame(draw_ms)

    def roll(self) -> bool:
        now = time.perf_counter()
        dt = now - self._t0
        if dt < 1.0:
            return False
        self.loop_hz = (self.ticks - self._ticks0) / dt
        self.fps = (self.frames - self._frames0) / dt
        self._t0, self._ticks0, self._frames0 = now, self.ticks, self.frames
        self.max_draw_ms = self.draw_ms
        return True


def _refresh(source, chart) -> bool:
    """One tick's data: copy what moved (candles, the trading view) into the chart; True if anything did."""
    dirty = False
    if source.poll():
        chart.set_data(source.snapshot())
        dirty = True
    if source.poll_trading():
        chart.set_trading(source.trading_view())
        dirty = True
    return dirty


def _write_png(path: str, img: np.ndarray) -> None:
    """``img`` as an opaque RGB PNG: the framebuffer's alpha is what blending left there (text drawn
    under an opaque tag lowers it), which the screen ignores and image viewers would not."""
    from vispy.io import write_png
    tmp = f"{path}.tmp.png"
    write_png(tmp, np.ascontiguousarray(img[..., :3]))
    os.replace(tmp, path)


def _connect_keys(canvas, source) -> None:
    """Keys: ←/→ market, ↑/↓ timeframe, 1–9 timeframe by position."""
    steps = {"Left": (-1, 0), "Right": (1, 0), "Up": (0, -1), "Down": (0, 1)}

    def on_key(ev):
        k = ev.key.name if ev.key is not None else ""
        if k in steps:
            source.select(*steps[k])
        elif ev.text and ev.text.isdigit() and ev.text != "0":
            source.select(0, None, int(ev.text) - 1)

    canvas.events.key_press.connect(on_key)


def _time_draws(canvas, chart, source, stats: FrameStats) -> None:
    """Measure each draw into ``stats``; after the first frame, turn the text on."""
    state = {"draw_start": 0.0}

    def on_draw_start(ev):
        state["draw_start"] = time.perf_counter()

    def on_draw_end(ev):
        stats.frame_done((time.perf_counter() - state["draw_start"]) * 1000)
        if stats.frames == 1:
            source.report(stats)
            chart.show_text(True)
            canvas.update()

    canvas.events.draw.connect(on_draw_start, position="first")
    canvas.events.draw.connect(on_draw_end, position="last")


def run_window(source, *, fps: int, size: tuple[int, int], max_candles: int, title: str,
               should_run: Callable[[], bool] = lambda: True, on_frame: Callable[[float], None] | None = None) -> int:
    """Open the PyQt6 window and run until it is closed or ``should_run()`` turns false (checked
    on every timer tick: the process's stop request). Returns an exit code."""
    import vispy
    vispy.use(app="pyqt6")
    from vispy import app, scene

    from .chart import CandleChart
    from .visuals import BACKGROUND

    canvas = scene.SceneCanvas(title=title, size=size, bgcolor=BACKGROUND, show=True, keys=None)
    chart = CandleChart(canvas, max_candles)
    chart.show_text(False)  # candles first; glyphs on the next frame
    stats = FrameStats(on_frame=on_frame)
    _time_draws(canvas, chart, source, stats)
    _connect_keys(canvas, source)
    last_status = [0.0]

    def tick(ev):
        if not should_run():
            app.quit()
            return
        stats.ticks += 1
        dirty = _refresh(source, chart)
        now = time.monotonic()
        if now - last_status[0] >= 0.5:
            last_status[0] = now
            stats.roll()
            chart.set_status(source.status_text(stats))
            source.report(stats)
            dirty = True
        if dirty:
            canvas.update()

    timer = app.Timer(interval=1.0 / fps, connect=tick, start=True)
    app.run()
    timer.stop()
    return 0


def make_offscreen_canvas(size: tuple[int, int]):
    """An off-screen SceneCanvas on VisPy's EGL backend (no X server, no Qt)."""
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    import vispy
    vispy.use(app="egl")
    from vispy import scene

    from .visuals import BACKGROUND
    return scene.SceneCanvas(size=size, bgcolor=BACKGROUND, show=False, keys=None)


def render_once(source, *, size: tuple[int, int], max_candles: int, inspect: Callable | None = None) -> np.ndarray:
    """Render one frame of ``source`` off-screen; returns RGBA uint8 (h, w, 4). ``inspect(chart)``,
    if given, is called after the frame (tests look at what the chart was given to draw)."""
    from .chart import CandleChart
    canvas = make_offscreen_canvas(size)
    chart = CandleChart(canvas, max_candles)
    source.poll()
    chart.set_data(source.snapshot())
    source.poll_trading()
    chart.set_trading(source.trading_view())
    chart.set_status(source.status_text(FrameStats()))
    img = canvas.render()
    if inspect is not None:
        inspect(chart)
    canvas.close()
    return img


def run_offscreen(source, *, fps: int, size: tuple[int, int], max_candles: int, snapshot_interval_s: float,
                  should_run: Callable[[], bool] = lambda: True, on_frame: Callable[[float], None] | None = None
                  ) -> int:
    """Render off-screen until ``should_run()`` is false, writing PNG snapshots."""
    import logging
    log = logging.getLogger("smtm.monitor")
    t_start = time.perf_counter()
    from .chart import CandleChart
    canvas = make_offscreen_canvas(size)
    t_canvas = time.perf_counter()
    chart = CandleChart(canvas, max_candles)
    t_chart = time.perf_counter()
    chart.show_text(False)  # candles first; glyphs on the next frame
    stats = FrameStats(on_frame=on_frame)
    period = 1.0 / fps
    last_status = last_snap = 0.0
    img = None
    dirty = True
    next_tick = time.monotonic()
    while should_run():
        stats.ticks += 1
        dirty = _refresh(source, chart) or dirty
        now = time.monotonic()
        if now - last_status >= 0.5:
            last_status = now
            stats.roll()
            chart.set_status(source.status_text(stats))
            source.report(stats)
            dirty = True
        if dirty:
            t0 = time.perf_counter()
            img = canvas.render()
            stats.frame_done((time.perf_counter() - t0) * 1000)
            dirty = False
            if stats.frames == 1:
                source.report(stats)  # announce the first frame at once (restart time)
                log.info("first frame (candles, no text): EGL canvas %.0f ms, scene %.0f ms, render %.0f ms",
                         (t_canvas - t_start) * 1e3, (t_chart - t_canvas) * 1e3, stats.draw_ms)
                chart.show_text(True)
                dirty = True
            elif stats.frames == 2:
                log.info("second frame (with text) %.0f ms after start", (time.perf_counter() - t_start) * 1e3)
        if img is not None and now - last_snap >= snapshot_interval_s:
            _write_png(str(source.snapshot_path), img)
            last_snap = now
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()
    canvas.close()
    return 0
