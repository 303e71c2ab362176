"""The trading engine on the price chart: fill marks and the open position's levels.

* a filled buy (entry) is a green ▲ under its candle, a filled sell (exit) a red ▼ over it, each
  with a short tick at the exact average fill price; a fill sits on the candle that contains its
  market time (``updated_ms``);
* the open position's average price is a solid line, its take-profit and stop-loss dashed lines
  (green / red), each labelled by a tag of its colour on the price axis (``avg`` / ``TP`` / ``SL``
  and the price), as trading charts label their levels: the plot stays free of text.

Marks and lines are in the price pane's coordinates (x = candle index, y = price normalized to the
pane's [lo, hi]), tags in the price axis's (x 0..1, the same y); :meth:`TradeOverlay.update`
recomputes only when the candles shown, the price range or what the engine shows on the chart
changed.
"""
from __future__ import annotations

import numpy as np

from .snapshot import TradingView
from .text import format_krw
from .visuals import AVG_PRICE, ENTRY, EXIT, STOP_LOSS, TAKE_PROFIT, ColoredVertices, make_text

MAX_MARKS = 256
_ARROW_W_PX, _ARROW_PX, _GAP_PX = 10.0, 13.0, 4.0  # ▲/▼ width and height, gap from the candle (pixels)
_TAG_PX = 15.0                                  # height of a level's tag on the price axis
_TAG_INK = (0.04, 0.05, 0.06, 1.0)


def place_fills(t: np.ndarray, fill_ms: np.ndarray, fill_price: np.ndarray, fill_entry: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fills that fall on the shown candles (``t``: candle starts, Unix s, ascending): each one's
    candle index (the candle containing its time), price and entry flag."""
    if not len(t) or not len(fill_ms):
        return np.zeros(0, int), np.zeros(0), np.zeros(0, bool)
    idx = np.searchsorted(np.asarray(t, np.int64), np.asarray(fill_ms, np.int64) // 1000, side="right") - 1
    ok = idx >= 0
    return idx[ok], np.asarray(fill_price, np.float64)[ok], np.asarray(fill_entry, bool)[ok]


def position_levels(view: TradingView | None) -> list[tuple[str, float, tuple]]:
    """The open position's lines: ``(label, price, colour)`` for the average price, TP and SL that are set."""
    p = view.position if view is not None else None
    if p is None or not p.avg_price > 0:
        return []
    out = [(f"avg {format_krw(p.avg_price)}", p.avg_price, AVG_PRICE)]
    for name, price, col in (("TP", p.tp, TAKE_PROFIT), ("SL", p.sl, STOP_LOSS)):
        if price > 0 and np.isfinite(price):
            out.append((f"{name} {format_krw(price)}", price, col))
    return out


def level_prices(view: TradingView | None) -> list[float]:
    """Prices the pane's range must include: the position's levels."""
    return [price for _, price, _ in position_levels(view)]


class TradeOverlay:
    """Fill marks and position lines in the price pane's scene."""

    def __init__(self, parent, axis_parent, fonts):
        self.arrows = ColoredVertices("triangles", 9 * MAX_MARKS, parent=parent)  # ▲/▼ and a tick each
        self.lines = ColoredVertices("lines", 2 + 4 * 200, parent=parent)
        self.tags = ColoredVertices("triangles", 6 * 3, parent=axis_parent)
        self.labels = make_text(fonts, [""], pos=[(0, 0)], color=_TAG_INK, font_size=7, bold=True, anchor_x="left",
                                anchor_y="center", parent=axis_parent)
        self.tags.order, self.labels.order = 10, 11  # over the axis's own labels
        self.labels.visible = False
        self._key: tuple | None = None
        self._text_on = True
        self._has_labels = False
        self.marks = (np.zeros(0, int), np.zeros(0), np.zeros(0, bool))  # what is drawn: index, price, entry
        self.levels: list[tuple[str, float, tuple]] = []

    def show_text(self, on: bool) -> None:
        self._text_on = on
        self.labels.visible = on and self._has_labels

    def update(self, t: np.ndarray, lows: np.ndarray, highs: np.ndarray, lo: float, hi: float,
               view: TradingView | None, pane_px: tuple[float, float] = (800.0, 400.0)) -> None:
        """``t``/``lows``/``highs`` of the candles shown, the pane's price range and its size in pixels."""
        n = len(t)
        key = (n, int(t[0]) if n else 0, int(t[-1]) if n else 0, lo, hi, pane_px,
               view.chart_key() if view else None)
        if key == self._key:
            return
        self._key = key
        span = (hi - lo) or 1.0
        if view is None or not n:
            self.marks, self.levels = (np.zeros(0, int), np.zeros(0), np.zeros(0, bool)), []
        else:
            idx, price, entry = place_fills(t, view.fill_ms, view.fill_price, view.fill_entry)
            self.marks = (idx[-MAX_MARKS:], price[-MAX_MARKS:], entry[-MAX_MARKS:])
            self.levels = position_levels(view)
        self._px = 1.0 / max(pane_px[1], 50.0)                  # one pixel, in pane units (y)
        self._xpx = (max(n, 10) + 1) / max(pane_px[0], 50.0)     # one pixel, in candles (x)
        self._set_arrows(lows, highs, lo, span)
        self._set_lines(n, lo, span)

    def _set_arrows(self, lows, highs, lo: float, span: float) -> None:
        idx, price, entry = self.marks
        if not len(idx):
            self.arrows.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            return
        x = idx.astype(np.float64)
        # ▲ apex just under the candle's low, ▼ apex just over its high
        gap, h = _GAP_PX * self._px, _ARROW_PX * self._px
        apex = np.where(entry, (lows[idx] - lo) / span - gap, (highs[idx] - lo) / span + gap)
        base = np.where(entry, apex - h, apex + h)
        # and a tick, 2 pixels high, at the exact fill price across the candle
        yt = (price - lo) / span
        t0, t1 = yt - self._px, yt + self._px
        half = max(_ARROW_W_PX * self._xpx, 0.9) / 2  # never narrower than its candle
        x0, x1 = x - half, x + half
        tri = np.empty((len(idx), 9, 2), np.float32)
        tri[:, 0], tri[:, 1], tri[:, 2] = np.c_[x0, base], np.c_[x1, base], np.c_[x, apex]
        tri[:, 3], tri[:, 4], tri[:, 5] = np.c_[x0, t0], np.c_[x1, t0], np.c_[x1, t1]
        tri[:, 6], tri[:, 7], tri[:, 8] = np.c_[x0, t0], np.c_[x1, t1], np.c_[x0, t1]
        col = np.where(entry[:, None], np.array(ENTRY, np.float32), np.array(EXIT, np.float32))
        self.arrows.set_vertices(tri.reshape(-1, 2), np.repeat(col, 9, axis=0).astype(np.float32))

    def _set_lines(self, n: int, lo: float, span: float) -> None:
        pos: list[np.ndarray] = []
        col: list[np.ndarray] = []
        right = max(n, 10) - 0.5
        ys = []
        for k, (_, level, colour) in enumerate(self.levels):
            y = (level - lo) / span
            ys.append(y)
            if k == 0:  # the average price: solid
                seg = np.array([[-1.0, y], [right + 1, y]])
            else:       # TP / SL: dashed, about 100 dashes across the pane
                period = max(right + 1, 10) / 100
                x0 = np.arange(-1.0, right + 1, period)
                seg = np.empty((len(x0), 2, 2))
                seg[:, 0] = np.c_[x0, np.full(len(x0), y)]
                seg[:, 1] = np.c_[x0 + period * 0.55, np.full(len(x0), y)]
                seg = seg.reshape(-1, 2)
            pos.append(seg)
            col.append(np.tile(np.array(colour), (len(seg), 1)))
        if pos:
            self.lines.set_vertices(np.concatenate(pos).astype(np.float32), np.concatenate(col).astype(np.float32))
        else:
            self.lines.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
        self._set_tags(ys)

    def _set_tags(self, ys: list[float]) -> None:
        """One tag per level on the price axis, moved apart where they would overlap."""
        self._has_labels = bool(ys)
        self.labels.visible = self._text_on and self._has_labels
        if not ys:
            self.tags.set_vertices(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
            return
        h = _TAG_PX * self._px
        ys = _spread(ys, h * 1.08)
        quads, cols = [], []
        for y, (_, _, colour) in zip(ys, self.levels):
            y0, y1 = y - h / 2, y + h / 2
            quads.append([[0, y0], [1, y0], [1, y1], [0, y0], [1, y1], [0, y1]])
            cols.append(np.tile(np.array(colour), (6, 1)))
        self.tags.set_vertices(np.array(quads, np.float32).reshape(-1, 2), np.concatenate(cols).astype(np.float32))
        self.labels.text = [label for label, _, _ in self.levels]
        self.labels.pos = np.array([[0.05, y] for y in ys], np.float32)


def _spread(ys: list[float], gap: float) -> list[float]:
    """``ys`` moved apart (keeping their order) so that labels at them are at least ``gap`` apart."""
    order = np.argsort(ys)
    out = np.array(ys, np.float64)
    for a, b in zip(order[:-1], order[1:]):
        if out[b] - out[a] < gap:
            out[b] = out[a] + gap
    return out.tolist()
