"""Running the chart: a PyQt6 window with a render timer, or off-screen through EGL.

Both modes drive the same :class:`render.chart.CandleChart` from a
:class:`render.snapshot.ChartSource` (the monitor's read-only view of shared memory,
``procs.views.chart_source``): ``poll()`` says whether anything shown changed, ``snapshot()``
gives a :class:`~render.snapshot.ChartSnapshot`, ``poll_trading()``/``trading_view()`` the same for
the trading engine's :class:`~render.snapshot.TradingView`, ``status_text``/``report`` the status line and
the heartbeat, ``select`` the keyboard navigation, ``snapshot_path`` where the PNG goes.

* :func:`run_window` — VisPy on PyQt6. A timer at ``fps`` polls; buffers are touched and a
  redraw requested only when ``poll()`` says something changed (dirty flag); the status
  line is refreshed twice a second. Keys: ←/→ market, ↑/↓ or 1–9 timeframe. With a GPU the
  frames are drawn into VisPy's QOpenGLWidget canvas; with software OpenGL (no GPU: llvmpipe)
  they are rendered off-screen and painted into a plain widget, at half the CPU a frame
  (``monitor.present``; :func:`_run_image_window` says why).
* :func:`run_offscreen` — no display: VisPy's EGL backend (``EGL_PLATFORM=surfaceless``,
  no X, no Qt), rendering at ``headless_fps`` when something changed and writing a PNG
  snapshot every ``snapshot_interval_s`` (atomically: write then rename).

Qt is only imported in window mode: with no display Qt aborts the process.
"""
from __future__ import annotations

import glob
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
    """Keys of VisPy's canvas (the GL window): :func:`_key_action`."""
    canvas.events.key_press.connect(lambda ev: _key_action(source, ev.key.name if ev.key is not None else "",
                                                           ev.text or ""))


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


def software_gl(env=None) -> bool:
    """Whether OpenGL would be software here (Mesa's llvmpipe): asked for (``LIBGL_ALWAYS_SOFTWARE`` true as Mesa
    reads it, a software ``GALLIUM_DRIVER``), or no GPU this user may render on (no ``/dev/dri/renderD*`` nor
    ``/dev/nvidia<N>`` it can open). It cannot see a display server that renders in software on a GPU machine
    (Xvfb, VNC): set ``monitor.present = "image"`` there."""
    env = os.environ if env is None else env
    if env.get("LIBGL_ALWAYS_SOFTWARE", "").strip().lower() in ("1", "true", "t", "yes", "y") or \
            env.get("GALLIUM_DRIVER", "") in ("llvmpipe", "softpipe", "swr"):
        return True
    nodes = glob.glob("/dev/dri/renderD*") + glob.glob("/dev/nvidia[0-9]*")
    return not any(os.access(n, os.R_OK | os.W_OK) for n in nodes)


def resolve_present(present: str) -> str:
    """``monitor.present`` → ``"gl"`` or ``"image"`` (``"auto"``: image with software OpenGL)."""
    if present == "auto":
        return "image" if software_gl() else "gl"
    if present not in ("gl", "image"):
        raise ValueError(f"monitor.present must be auto, gl or image, not {present!r}")
    return present


def run_window(source, *, fps: int, size: tuple[int, int], max_candles: int, title: str,
               should_run: Callable[[], bool] = lambda: True, on_frame: Callable[[float], None] | None = None,
               present: str = "auto") -> int:
    """Open the PyQt6 window and run until it is closed or ``should_run()`` turns false (checked
    on every timer tick: the process's stop request). Returns an exit code.

    ``present`` (:func:`resolve_present`): ``"gl"`` draws into VisPy's QOpenGLWidget canvas; ``"image"`` renders
    off-screen through EGL and paints the pixels into a plain widget (:func:`_run_image_window`)."""
    run = _run_image_window if resolve_present(present) == "image" else _run_gl_window
    return run(source, fps=fps, size=size, max_candles=max_candles, title=title, should_run=should_run,
               on_frame=on_frame)


def _tick_body(source, chart, stats: FrameStats, last_status: list) -> bool:
    """One timer tick's work shared by both windows: the data that moved, and twice a second the status line and
    the heartbeat. True if a new frame is needed."""
    stats.ticks += 1
    dirty = _refresh(source, chart)
    now = time.monotonic()
    if now - last_status[0] >= 0.5:
        last_status[0] = now
        stats.roll()
        chart.set_status(source.status_text(stats))
        source.report(stats)
        dirty = True
    return dirty


def _key_action(source, name: str, text: str) -> None:
    """←/→ market, ↑/↓ timeframe, 1–9 timeframe by position (both windows)."""
    steps = {"Left": (-1, 0), "Right": (1, 0), "Up": (0, -1), "Down": (0, 1)}
    if name in steps:
        source.select(*steps[name])
    elif text and text.isdigit() and text != "0":
        source.select(0, None, int(text) - 1)


def _run_image_window(source, *, fps: int, size: tuple[int, int], max_candles: int, title: str,
                      should_run: Callable[[], bool], on_frame: Callable[[float], None] | None) -> int:
    """The window for software OpenGL: VisPy renders each frame off-screen (EGL, the same scene as
    :func:`run_offscreen`) and a plain QWidget paints its pixels (a raster draw of the image, flipped: ~1 ms for
    1280x720 measured here).

    Why: with llvmpipe, Qt composes a QOpenGLWidget in software too — measured here at 1280x720, an *empty*
    VisPy canvas costs 15 ms of CPU a frame that way; the whole chart costs 26-31 ms a frame in the GL widget and
    16-17.5 ms this way. A frame is rendered only when something changed, at most ``fps`` times a second, and not
    while the window is minimised. The frame time given to ``on_frame`` is the render and the read of its pixels
    (the paint follows in Qt's loop); in the GL window it is VisPy's draw. An exception in the loop ends it and is
    raised from here (a Qt slot must not raise)."""
    from PyQt6 import QtCore, QtGui, QtWidgets, sip  # a plain widget: Qt makes no GL context of its own

    from .chart import CandleChart
    from .visuals import BACKGROUND

    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    keys = {QtCore.Qt.Key.Key_Left: "Left", QtCore.Qt.Key.Key_Right: "Right", QtCore.Qt.Key.Key_Up: "Up",
            QtCore.Qt.Key.Key_Down: "Down"}
    background = QtGui.QColor.fromRgbF(*BACKGROUND)

    class FrameView(QtWidgets.QWidget):
        """Shows the newest frame (RGBA, rows bottom-up as OpenGL reads them: painted flipped, not copied)."""

        def __init__(self):
            super().__init__()
            self.setWindowTitle(title)
            self.resize(*size)
            self.setAttribute(QtCore.Qt.WidgetAttribute.WA_OpaquePaintEvent)   # every pixel is painted
            self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
            self.pixels: np.ndarray | None = None   # the buffer the QImage points at, kept alive with it
            self.image = None
            self.closed = False

        def show_frame(self, rgba: np.ndarray, scale: int) -> None:
            up = rgba[::-1]   # VisPy flips the rows it read with a view: undone, the buffer is bottom row first
            if not up.flags.c_contiguous:
                up = np.ascontiguousarray(up)
            h, w = up.shape[:2]
            # RGBX: the framebuffer's alpha is what blending left there; the screen shows the colour only
            image = QtGui.QImage(sip.voidptr(up.ctypes.data), w, h, w * 4, QtGui.QImage.Format.Format_RGBX8888)
            image.setDevicePixelRatio(scale)
            self.image, self.pixels = image, up     # the new image first: the old one never outlives its buffer
            self.update()

        def paintEvent(self, ev):
            p = QtGui.QPainter(self)
            img = self.image
            if img is None or img.deviceIndependentSize().toSize() != self.size():
                p.fillRect(self.rect(), background)   # before the first frame, or resized until the next one
            if img is not None:
                p.translate(0, self.height())
                p.scale(1, -1)
                p.drawImage(0, 0, img)
            p.end()

        def keyPressEvent(self, ev):
            _key_action(source, keys.get(ev.key(), ""), ev.text())

        def closeEvent(self, ev):
            self.closed = True
            ev.accept()

    view = FrameView()
    scale = max(1, round(view.devicePixelRatioF()))   # VisPy's pixel scale is an integer
    canvas = make_offscreen_canvas(size, px_scale=scale)
    chart = CandleChart(canvas, max_candles)
    chart.show_text(False)  # candles first; glyphs on the next frame
    stats = FrameStats(on_frame=on_frame)
    last_status = [0.0]
    state = {"dirty": True}
    failed: list[BaseException] = []
    view.show()

    def step():
        if view.closed or not should_run():
            qapp.quit()
            return
        if _tick_body(source, chart, stats, last_status):
            state["dirty"] = True
        want = (max(1, view.width()), max(1, view.height()))   # logical pixels
        if tuple(canvas.size) != want:     # resized: a new surface, and the scene lays out for it
            canvas.size = want             # (VisPy's EGL backend emits no resize event of its own)
            canvas.events.resize(size=want, physical_size=(want[0] * scale, want[1] * scale))
            state["dirty"] = True
        if not state["dirty"] or view.isMinimized():
            return
        t0 = time.perf_counter()
        view.show_frame(canvas.render(), scale)
        stats.frame_done((time.perf_counter() - t0) * 1000)
        state["dirty"] = False
        if stats.frames == 1:
            source.report(stats)
            chart.show_text(True)
            state["dirty"] = True

    def tick():
        try:
            step()
        except BaseException as e:   # handed to the caller below: Qt aborts the process on an exception in a slot
            failed.append(e)
            qapp.exit(1)

    timer = QtCore.QTimer()
    timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
    timer.timeout.connect(tick)
    timer.start(max(1, round(1000 / fps)))
    qapp.exec()
    timer.stop()
    view.close()
    canvas.close()
    if failed:
        raise failed[0]
    return 0


def _run_gl_window(source, *, fps: int, size: tuple[int, int], max_candles: int, title: str,
                   should_run: Callable[[], bool], on_frame: Callable[[float], None] | None) -> int:
    """The window for a GPU: VisPy's own PyQt6 canvas (a QOpenGLWidget)."""
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
        if _tick_body(source, chart, stats, last_status):
            canvas.update()

    timer = app.Timer(interval=1.0 / fps, connect=tick, start=True)
    app.run()
    timer.stop()
    return 0


def make_offscreen_canvas(size: tuple[int, int], px_scale: int = 1):
    """An off-screen SceneCanvas on VisPy's EGL backend (no X server, no Qt); ``px_scale`` device pixels a canvas
    pixel (a HiDPI window's)."""
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    import vispy
    vispy.use(app="egl")
    from vispy import scene

    from .visuals import BACKGROUND
    return scene.SceneCanvas(size=size, bgcolor=BACKGROUND, show=False, keys=None, px_scale=px_scale)


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
