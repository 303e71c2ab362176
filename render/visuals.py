"""What every part of the monitor draws with: the colours, the text method, and the one custom visual
(:class:`ColoredVertices`: per-vertex coloured triangles or GL lines from fixed-size buffers updated
in place — on llvmpipe 2–4x faster than ``Mesh.set_data``, which rebuilds its shader on every call).
"""
from __future__ import annotations

import numpy as np
from vispy import gloo, scene
from vispy.visuals import Visual
from vispy.visuals.text.text import FontManager

RISE = (0.85, 0.22, 0.20, 1.0)      # red: close >= open
FALL = (0.16, 0.42, 0.85, 1.0)      # blue: close < open
EMA_FAST = (0.98, 0.75, 0.05, 1.0)  # amber
EMA_SLOW = (0.80, 0.35, 1.00, 1.0)  # violet
BOLLINGER = (0.45, 0.75, 0.80, 0.55)  # translucent cyan: upper, middle, lower
RSI_LINE = (0.30, 0.85, 0.45, 1.0)    # green
MACD_LINE = (0.95, 0.55, 0.15, 1.0)   # orange
MACD_SIGNAL = (0.55, 0.65, 1.00, 1.0)  # light blue
GUIDE = (0.35, 0.37, 0.42, 1.0)
SIGNAL_MARK = (0.10, 0.95, 0.60, 1.0)  # bright green triangles under the candle
BACKGROUND = (0.06, 0.07, 0.09, 1.0)
TEXT = (0.85, 0.87, 0.90, 1.0)

# the trading engine (render.overlay, render.panels)
ENTRY = (0.20, 0.95, 0.35, 1.0)        # green ▲ under the candle: a buy filled
EXIT = (1.00, 0.25, 0.45, 1.0)         # red ▼ over the candle: a sell filled
AVG_PRICE = (0.92, 0.92, 0.95, 1.0)    # the open position's average price
TAKE_PROFIT = (0.25, 0.90, 0.45, 1.0)  # dashed
STOP_LOSS = (1.00, 0.30, 0.30, 1.0)    # dashed
ARMED = (0.13, 0.70, 0.30, 1.0)
DISARMED = (0.95, 0.68, 0.10, 1.0)
KILLED = (0.88, 0.13, 0.13, 1.0)
NOT_RUNNING = (0.40, 0.42, 0.46, 1.0)
DIM = (0.55, 0.58, 0.63, 1.0)          # labels, headers
WARN = (1.00, 0.72, 0.20, 1.0)
ALERT = (1.00, 0.35, 0.35, 1.0)
PANEL = (0.09, 0.10, 0.13, 1.0)        # the right column's background

#: Glyph distance fields computed on the CPU (VisPy's compiled EDT): on Mesa llvmpipe this is
#: ~3.6x faster than the GPU path (0.43 s vs 1.55 s for the monitor's glyphs), which is most
#: of the monitor's first frame after a restart.
TEXT_METHOD = "cpu"


def font_manager() -> FontManager:
    """One glyph atlas for every text visual of a canvas. VisPy gives each text visual its own unless
    told otherwise, so each rasterized the same glyphs again: with the trading panels' ~20 text
    visuals that made the first frame with text 1.5 s instead of 0.3 s on llvmpipe. One per canvas
    (an atlas is a texture of one GL context)."""
    return FontManager(method=TEXT_METHOD)


def make_text(fonts: FontManager, text, **kw) -> scene.Text:
    """A text node drawing its glyphs from ``fonts`` (:func:`font_manager`)."""
    return scene.Text(text, method=TEXT_METHOD, font_manager=fonts, **kw)

_VERT = """
attribute vec2 a_position;
attribute vec4 a_color;
varying vec4 v_color;
void main() {
    gl_Position = $transform(vec4(a_position, 0.0, 1.0));
    v_color = a_color;
}
"""
_FRAG = """
varying vec4 v_color;
void main() {
    if (v_color.a <= 0.0) discard;
    gl_FragColor = v_color;
}
"""


class ColoredVerticesVisual(Visual):
    """Per-vertex coloured primitives (``"triangles"`` or ``"lines"``) from fixed-size buffers."""

    def __init__(self, mode: str, max_vertices: int):
        super().__init__(vcode=_VERT, fcode=_FRAG)
        self._draw_mode = mode
        self._pos = np.zeros((max_vertices, 2), np.float32)
        self._col = np.zeros((max_vertices, 4), np.float32)
        self._vbo_pos = gloo.VertexBuffer(self._pos)
        self._vbo_col = gloo.VertexBuffer(self._col)
        self.shared_program["a_position"] = self._vbo_pos
        self.shared_program["a_color"] = self._vbo_col
        self.n = 0
        self.set_gl_state("translucent", depth_test=False, cull_face=False)

    def set_vertices(self, pos: np.ndarray, col: np.ndarray) -> None:
        """``pos`` float32 (n, 2), ``col`` float32 (n, 4); n <= max_vertices."""
        n = len(pos)
        self._pos[:n] = pos
        self._col[:n] = col
        if n < self.n:  # clear what the previous frame used beyond n
            self._pos[n:self.n] = 0
            self._col[n:self.n] = 0
        self.n = n
        self._vbo_pos.set_data(self._pos)
        self._vbo_col.set_data(self._col)

    def _prepare_transforms(self, view):
        view.view_program.vert["transform"] = view.get_transform()

    def _prepare_draw(self, view):
        return self.n > 0


ColoredVertices = scene.visuals.create_visual_node(ColoredVerticesVisual)


def candle_vertices(o, h, l, c, lo: float, hi: float, body_width: float = 0.7):
    """Vertices for n candles at x = 0..n-1 in a window whose price range is [lo, hi].

    Returns ``(body_pos (6n,2), body_col (6n,4), wick_pos (2n,2), wick_col (2n,4))`` float32,
    y normalized to [0, 1]. A body never collapses below a visible sliver (doji).
    """
    n = len(o)
    span = (hi - lo) or 1.0
    x = np.arange(n, dtype=np.float64)
    yo, yh, yl, yc = ((np.asarray(a, np.float64) - lo) / span for a in (o, h, l, c))
    top = np.maximum(yo, yc)
    bot = np.minimum(yo, yc)
    thin = top - bot < 0.002
    top = np.where(thin, bot + 0.002, top)
    x0, x1 = x - body_width / 2, x + body_width / 2
    body = np.empty((n, 6, 2), np.float32)
    body[:, 0] = np.c_[x0, bot]
    body[:, 1] = np.c_[x1, bot]
    body[:, 2] = np.c_[x1, top]
    body[:, 3] = np.c_[x0, bot]
    body[:, 4] = np.c_[x1, top]
    body[:, 5] = np.c_[x0, top]
    colors = np.where((np.asarray(c) >= np.asarray(o))[:, None], np.array(RISE, np.float32), np.array(FALL, np.float32))
    body_col = np.repeat(colors, 6, axis=0).astype(np.float32)
    wick = np.empty((n, 2, 2), np.float32)
    wick[:, 0] = np.c_[x, yl]
    wick[:, 1] = np.c_[x, yh]
    wick_col = np.repeat(colors, 2, axis=0).astype(np.float32)
    return body.reshape(-1, 2), body_col, wick.reshape(-1, 2), wick_col


def nice_ticks(lo: float, hi: float, target: int = 8) -> np.ndarray:
    """Round price levels inside [lo, hi] at a 1-2-5 step, about ``target`` of them."""
    span = hi - lo
    if not span > 0:
        return np.array([lo])
    raw = span / target
    mag = 10.0 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = np.ceil(lo / step) * step
    return np.arange(first, hi, step)
