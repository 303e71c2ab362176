"""The candlestick chart: every pixel the monitor draws (VisPy scene graph).

Layout (a VisPy grid): the engine's mode banner across the top (:mod:`render.panels`), a status
line under it; on the left the price pane (candles, EMA lines, Bollinger Bands, buy-signal marks
and the engine's fills and position lines, :mod:`render.overlay`) with the price axis on its
right, the RSI and MACD panels and time labels under it; on the right a column with the shown
market's price and position, the account, the order and fill tape and the timeline. The banner,
the status line and the right column are drawn into textures when their text changes
(:mod:`render.layer`), not on every frame. Every text visual shares one glyph atlas
(:func:`render.visuals.font_manager`).

Candles are drawn by two instances of one small custom visual (:class:`ColoredVertices`):
bodies as triangles, wicks as 1-pixel GL lines. Each owns fixed-size vertex buffers
(``max_candles`` capacity) that are updated **in place** (same size each upload, so no
reallocation and no shader rebuild — on llvmpipe 2–4x faster than ``Mesh.set_data``).
Unused vertices are transparent and degenerate.

Coordinates: x is the candle's position in the window (0 … n-1, equally spaced, no
gaps for intervals without trades, as trading charts do); y is the price normalized to
the window's [low, high] range, so float32 vertex precision never matters even for
prices of 10^8 KRW. The price axis shows the real KRW range and is only re-laid out
when that range changes (text layout each frame costs frames on llvmpipe).

Colours follow Upbit (Korean convention): a rising candle (close >= open) is red, a
falling one blue.
"""
from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from vispy import scene

from . import fonts
from .layer import CachedLayer
from .overlay import TradeOverlay, level_prices
from .panels import PANEL_WIDTH, Banner, SidePanel
from .snapshot import ChartSnapshot, TradingView
from .text import format_krw
from .visuals import (
    BACKGROUND,
    BOLLINGER,
    DIM,
    EMA_FAST,
    EMA_SLOW,
    FALL,
    GUIDE,
    MACD_LINE,
    MACD_SIGNAL,
    PANEL,
    RISE,
    RSI_LINE,
    SIGNAL_MARK,
    TEXT,
    ColoredVertices,
    candle_vertices,
    font_manager,
    make_text,
    nice_ticks,
)

fonts.install()

class CandleChart:
    """The monitor's scene: call :meth:`set_data` when the data changed, :meth:`set_status` to
    change the status line. Both only touch GPU buffers/text when the content differs."""

    def __init__(self, canvas: scene.SceneCanvas, max_candles: int = 200):
        self.canvas = canvas
        self.max_candles = max_candles
        self.fonts = font_manager()
        grid = canvas.central_widget.add_grid(spacing=0, margin=6)
        # the banner and the right column are drawn into textures when they change; the status line (it changes
        # twice a second) is drawn each frame: re-rendering a texture makes VisPy recompute every transform of the
        # scene twice (push and pop of the framebuffer), ~10 ms, while drawing the line costs well under one
        banner_box = grid.add_widget(scene.Widget(), row=0, col=0, col_span=3)
        banner_box.height_min = banner_box.height_max = Banner.HEIGHT
        self.banner = Banner(CachedLayer(banner_box, BACKGROUND), self.fonts)
        status_box = grid.add_widget(scene.Widget(), row=1, col=0, col_span=3)
        status_box.height_min = status_box.height_max = 40
        self.status = make_text(self.fonts, "", color=TEXT, font_size=9, anchor_x="left", anchor_y="center",
                                pos=(6, 20), parent=status_box)
        side_box = grid.add_widget(scene.Widget(), row=2, col=2, row_span=4)  # its layer paints PANEL
        side_box.width_min = side_box.width_max = PANEL_WIDTH
        self.side = SidePanel(CachedLayer(side_box, PANEL), self.fonts)
        self.view = grid.add_view(row=2, col=0, border_color=(0.25, 0.27, 0.3, 1))
        self.view.camera = scene.PanZoomCamera(interactive=False)
        self.price_view = grid.add_view(row=2, col=1)
        self.price_view.width_min = self.price_view.width_max = 96
        self.price_view.camera = scene.PanZoomCamera(interactive=False)
        self.price_view.camera.set_range(x=(0, 1), y=(0, 1), margin=0)
        self.price_labels = make_text(self.fonts, ["-"], pos=[(0.12, 0.5)], color=TEXT, font_size=7,
                                      anchor_x="left", parent=self.price_view.scene)
        self.price_ticks = scene.Line(np.zeros((2, 2), np.float32), color=TEXT, connect="segments", method="gl",
                                      parent=self.price_view.scene)
        # RSI panel (0..100 with 30/70 guides) and MACD panel (histogram, line, signal)
        self.rsi_view = grid.add_view(row=3, col=0, border_color=(0.25, 0.27, 0.3, 1))
        self.rsi_view.height_min = self.rsi_view.height_max = 100
        self.rsi_view.camera = scene.PanZoomCamera(interactive=False)
        self.rsi_guides = scene.Line(np.array([[-1, 30], [1e4, 30], [-1, 70], [1e4, 70]], np.float32), color=GUIDE,
                                     connect="segments", method="gl", parent=self.rsi_view.scene)
        self.rsi_line = scene.Line(np.zeros((2, 2), np.float32), color=RSI_LINE, width=1.5, method="gl",
                                   parent=self.rsi_view.scene)
        self.macd_view = grid.add_view(row=4, col=0, border_color=(0.25, 0.27, 0.3, 1))
        self.macd_view.height_min = self.macd_view.height_max = 120
        self.macd_view.camera = scene.PanZoomCamera(interactive=False)
        self.macd_hist = ColoredVertices("triangles", 6 * max_candles, parent=self.macd_view.scene)
        self.macd_line = scene.Line(np.zeros((2, 2), np.float32), color=MACD_LINE, width=1.5, method="gl",
                                    parent=self.macd_view.scene)
        self.macd_signal = scene.Line(np.zeros((2, 2), np.float32), color=MACD_SIGNAL, width=1.5, method="gl",
                                      parent=self.macd_view.scene)
        self.marks = ColoredVertices("triangles", 3 * max_candles, parent=self.view.scene)
        self.xlabels_view = grid.add_view(row=5, col=0)
        self.xlabels_view.height_max = 26
        self.xlabels_view.camera = scene.PanZoomCamera(interactive=False)
        self.xlabels = make_text(self.fonts, ["-"], pos=[(0, 0.5)], color=TEXT, font_size=7, anchor_x="center",
                                 parent=self.xlabels_view.scene)
        self.wicks = ColoredVertices("lines", 2 * max_candles, parent=self.view.scene)
        self.bodies = ColoredVertices("triangles", 6 * max_candles, parent=self.view.scene)
        self.ema_fast = scene.Line(np.zeros((2, 2), np.float32), color=EMA_FAST, width=2, method="gl",
                                   parent=self.view.scene)
        self.ema_slow = scene.Line(np.zeros((2, 2), np.float32), color=EMA_SLOW, width=2, method="gl",
                                   parent=self.view.scene)
        self.bb_lines = [scene.Line(np.zeros((2, 2), np.float32), color=BOLLINGER, width=1, method="gl",
                                    parent=self.view.scene) for _ in range(3)]
        self.overlay = TradeOverlay(self.view.scene, self.price_view.scene, self.fonts)
        self.rsi_label = make_text(self.fonts, "RSI", color=DIM, font_size=7, anchor_x="left",
                                   anchor_y="center", pos=(6, 9), parent=self.rsi_view)
        self.macd_label = make_text(self.fonts, "MACD", color=DIM, font_size=7, anchor_x="left",
                                    anchor_y="center", pos=(6, 9), parent=self.macd_view)
        self.waiting_text = make_text(self.fonts, "waiting for data", color=TEXT, font_size=14, pos=(0.5, 0.5),
                                      parent=self.view.scene)
        self._marks_idx = np.zeros(0, int)
        self._range: tuple | None = None
        self._panels_xr: tuple | None = None
        self._xkey: tuple | None = None
        self._status = None
        self._snap: ChartSnapshot | None = None
        self.trading: TradingView | None = None
        self._trading_key: tuple | None = None
        self.view.camera.set_range(x=(-1, 10), y=(-0.05, 1.05), margin=0)
        self.xlabels_view.camera.set_range(x=(-1, 10), y=(0, 1), margin=0)

    def show_text(self, visible: bool) -> None:
        """Show or hide every text visual. The first frame after a (re)start is drawn without
        text: rasterizing the glyphs costs ~0.6 s on llvmpipe, and the candles should not
        wait for it; the labels follow on the next frame."""
        for t in (self.status, self.price_labels, self.xlabels, self.rsi_label, self.macd_label):
            t.visible = visible
        for b in self.banner.blocks + self.side.blocks:
            b.show(visible)
        self.overlay.show_text(visible)

    def _pane_px(self) -> tuple[float, float]:
        """The price pane's size in pixels; before the first layout, what the grid will give it."""
        w, h = (float(v) for v in self.view.size)
        if h > 50:
            return w, h
        cw, ch = self.canvas.size
        return float(cw) - 12 - 96 - PANEL_WIDTH, float(ch) - 12 - Banner.HEIGHT - 40 - 100 - 120 - 26

    def set_trading(self, view: TradingView) -> None:
        """Show the engine's state: banner and right column (text only where it changed), and on
        the price pane the fills and the position's lines (redrawn only when those changed)."""
        self.trading = view
        self.banner.update(view)
        self.side.update(view)
        key = view.chart_key()
        if key != self._trading_key:
            self._trading_key = key
            if self._snap is not None:
                self.set_data(self._snap)

    def set_status(self, text: str) -> None:
        if text != self._status:
            self.status.text = text
            self._status = text

    def set_data(self, snap: ChartSnapshot) -> None:
        """Show ``snap`` (≤ max_candles candles, oldest first, indicators aligned with them; see
        :class:`render.snapshot.ChartSnapshot`)."""
        candles, ema_fast, ema_slow = snap.candles, snap.ema_fast, snap.ema_slow
        bands, rsi, macd, marks = snap.bands, snap.rsi, snap.macd_lines, snap.marks
        self._snap = snap
        if self.rsi_label.text != snap.rsi_label:
            self.rsi_label.text = snap.rsi_label
        if self.macd_label.text != snap.macd_label:
            self.macd_label.text = snap.macd_label
        self._set_panels(candles, rsi, macd, marks)
        candles = candles[-self.max_candles:]
        ema_fast = ema_fast[-self.max_candles:]
        ema_slow = ema_slow[-self.max_candles:]
        bands = tuple(b[-self.max_candles:] for b in bands) if bands is not None else ()
        n = len(candles)
        if n == 0:
            self.bodies.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            self.wicks.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            self.ema_fast.visible = self.ema_slow.visible = False
            for line in self.bb_lines:
                line.visible = False
            self.marks.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            self.overlay.update(candles["t"], candles["l"], candles["h"], 0.0, 1.0, None)
            self.waiting_text.visible = True
            return
        self.waiting_text.visible = False
        lo = float(candles["l"].min())
        hi = float(candles["h"].max())
        for e in (ema_fast, ema_slow, *bands, np.array(level_prices(self.trading), np.float64)):
            ok = e[np.isfinite(e)]
            if len(ok):
                lo, hi = min(lo, float(ok.min())), max(hi, float(ok.max()))
        pad = (hi - lo) * 0.04 or max(abs(hi) * 0.01, 1e-8)
        lo, hi = lo - pad, hi + pad
        bp, bc, wp, wc = candle_vertices(candles["o"], candles["h"], candles["l"], candles["c"], lo, hi)
        self._set_marks(np.asarray(candles["l"], np.float64), lo, hi)
        self.overlay.update(candles["t"], np.asarray(candles["l"], np.float64), np.asarray(candles["h"], np.float64),
                            lo, hi, self.trading, self._pane_px())
        self.bodies.set_vertices(bp, bc)
        self.wicks.set_vertices(wp, wc)
        lines = [(self.ema_fast, ema_fast), (self.ema_slow, ema_slow)] + list(zip(self.bb_lines, bands))
        for line in self.bb_lines[len(bands):]:
            line.visible = False
        for line, e in lines:
            idx = np.flatnonzero(np.isfinite(e))
            if len(idx) >= 2:
                pts = np.c_[idx, (e[idx] - lo) / (hi - lo)].astype(np.float32)
                line.set_data(pos=pts)
                line.visible = True
            else:
                line.visible = False
        if self._range != (lo, hi, n):
            self._range = (lo, hi, n)
            self._set_price_labels(lo, hi)
            self.price_view.camera.set_range(x=(0, 1), y=(0, 1), margin=0)
            self.view.camera.set_range(x=(-1, max(n, 10)), y=(0, 1), margin=0)
            self.xlabels_view.camera.set_range(x=(-1, max(n, 10)), y=(0, 1), margin=0)
        key = (n, int(candles["t"][0]), int(candles["t"][-1]))
        if key != self._xkey:
            self._xkey = key
            self._set_time_labels(candles["t"])

    def _set_panels(self, candles, rsi, macd, marks) -> None:
        n = min(len(candles), self.max_candles)
        xr = (-1, max(n, 10))
        if xr != self._panels_xr:   # a camera change recomputes every transform of the scene: only when it moved
            self._panels_xr = xr
            self.rsi_view.camera.set_range(x=xr, y=(0, 100), margin=0)
            self.macd_view.camera.set_range(x=xr, y=(-1.1, 1.1), margin=0)  # MACD values are scaled by their span
        if rsi is not None and n:
            r = rsi[-n:]
            idx = np.flatnonzero(np.isfinite(r))
            self.rsi_line.visible = len(idx) >= 2
            if len(idx) >= 2:
                self.rsi_line.set_data(pos=np.c_[idx, r[idx]].astype(np.float32))
        else:
            self.rsi_line.visible = False
        if macd is not None and n:
            line, sig, hist = (a[-n:] for a in macd)
            ok = np.isfinite(hist)
            span = float(np.nanmax(np.abs(np.r_[line[ok], sig[ok], hist[ok]]))) if ok.any() else 1.0
            span = span or 1.0
            idx = np.flatnonzero(ok)
            x0, x1 = idx - 0.35, idx + 0.35
            y = hist[idx] / span
            quads = np.empty((len(idx), 6, 2), np.float32)
            quads[:, 0] = np.c_[x0, np.zeros_like(y)]
            quads[:, 1] = np.c_[x1, np.zeros_like(y)]
            quads[:, 2] = np.c_[x1, y]
            quads[:, 3] = np.c_[x0, np.zeros_like(y)]
            quads[:, 4] = np.c_[x1, y]
            quads[:, 5] = np.c_[x0, y]
            cols = np.where((y >= 0)[:, None], np.array(RISE, np.float32), np.array(FALL, np.float32))
            self.macd_hist.set_vertices(quads.reshape(-1, 2), np.repeat(cols, 6, axis=0).astype(np.float32))
            for vis, arr in ((self.macd_line, line), (self.macd_signal, sig)):
                vis.visible = len(idx) >= 2
                if len(idx) >= 2:
                    vis.set_data(pos=np.c_[idx, arr[idx] / span].astype(np.float32))
        else:
            self.macd_hist.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            self.macd_line.visible = self.macd_signal.visible = False
        # marks index the snapshot; the chart shows its last n candles
        self._marks_idx = np.asarray(marks if marks is not None else [], int) - (len(candles) - n)

    def _set_marks(self, lows: np.ndarray, lo: float, hi: float) -> None:
        idx = self._marks_idx[(self._marks_idx >= 0) & (self._marks_idx < len(lows))]
        if len(idx) == 0:
            self.marks.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            return
        y = (lows[idx] - lo) / (hi - lo) - 0.015
        tri = np.empty((len(idx), 3, 2), np.float32)
        tri[:, 0] = np.c_[idx - 0.45, y - 0.03]
        tri[:, 1] = np.c_[idx + 0.45, y - 0.03]
        tri[:, 2] = np.c_[idx, y]
        self.marks.set_vertices(tri.reshape(-1, 2), np.tile(np.array(SIGNAL_MARK, np.float32), (3 * len(idx), 1)))

    def _set_price_labels(self, lo: float, hi: float) -> None:
        ticks = nice_ticks(lo, hi)
        y = (ticks - lo) / (hi - lo)
        self.price_labels.text = [format_krw(v) for v in ticks]
        self.price_labels.pos = np.c_[np.full(len(ticks), 0.12), y].astype(np.float32)
        seg = np.zeros((2 * len(ticks), 2), np.float32)
        seg[0::2, 0], seg[1::2, 0] = 0.0, 0.08
        seg[0::2, 1] = seg[1::2, 1] = y
        self.price_ticks.set_data(pos=seg)

    def _set_time_labels(self, t: np.ndarray) -> None:
        n = len(t)
        k = min(6, n)
        lo_i, hi_i = (round(n * 0.06), round(n * 0.94)) if n >= 20 else (0, n - 1)
        idx = np.unique(np.linspace(lo_i, hi_i, k).round().astype(int))
        fmt = "%m-%d %H:%M" if n > 1 and (t[-1] - t[0]) / max(n - 1, 1) < 86400 else "%Y-%m-%d"
        labels = [datetime.fromtimestamp(int(t[i]), UTC).strftime(fmt) for i in idx]
        self.xlabels.text = labels
        self.xlabels.pos = np.c_[idx, np.full(len(idx), 0.5)].astype(np.float32)
