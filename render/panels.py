"""The trading engine's text: the mode banner across the top and the right column (the shown market's
price and position, the account, the order and fill tape, the timeline).

Every text visual is a :class:`TextBlock`: its strings, positions and colours are replaced only when
they differ from what it shows, so glyph layout stays off the per-frame path; what changes often (the
engine's age, the last price, the P&L) sits in small blocks of its own, so that a new value lays out
a few strings, not the whole column. Coordinates are the
widget's pixels, y down. Colours: P&L as the candles (red = gain, blue = loss, Upbit's convention,
always with its sign); buys green, sells red as the chart's fill marks.
"""
from __future__ import annotations

import numpy as np

from .layer import CachedLayer
from .snapshot import OrderView, TimelineView, TradingView
from .text import format_krw, format_market_ms, format_qty, format_signed_krw, wrap
from .visuals import (
    ALERT,
    ARMED,
    BACKGROUND,
    DIM,
    DISARMED,
    ENTRY,
    EXIT,
    FALL,
    KILLED,
    NOT_RUNNING,
    RISE,
    STOP_LOSS,
    TAKE_PROFIT,
    TEXT,
    WARN,
    ColoredVertices,
    make_text,
)

MODE_COLOURS = {"ARMED": ARMED, "DISARMED": DISARMED, "KILLED": KILLED}
SEVERITY_COLOURS = {"info": DIM, "warn": WARN, "alert": ALERT}
#: order states (``procs.trading.orders.OrderState``): done ones plain or dim, failed ones red, open ones amber
STATE_COLOURS = {"filled": TEXT, "cancelled": DIM, "expired": DIM, "rejected": ALERT, "unknown": ALERT}
STATE_NAMES = {"partially_filled": "partial"}
PANEL_WIDTH = 400
_PX = 96 / 72  # pixels per point

#: risk flags that are loss-limit trips (they disarm the engine); others only block entries
TRIPS = ("daily_loss", "drawdown")


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _level(price: float, avg: float) -> str:
    if not (price > 0 and avg > 0):
        return "-"
    return f"{format_krw(price)} ({(price / avg - 1) * 100:+.2f}%)"


def pnl_colour(v: float) -> tuple:
    return RISE if v > 0 else FALL if v < 0 else TEXT


class TextBlock:
    """One text visual holding many strings, each at its own position with its own colour, in a
    :class:`~render.layer.CachedLayer` (which it invalidates when it changes)."""

    def __init__(self, layer: CachedLayer, fonts, font_size: float, anchor_x: str = "left", bold: bool = False):
        self.font_size = font_size
        self.layer = layer
        self.node = make_text(fonts, [""], pos=[(0, 0)], color=TEXT, font_size=font_size, bold=bold,
                              anchor_x=anchor_x, anchor_y="center", parent=layer.root)
        self.node.visible = False
        self.items: tuple = ()
        self._on = True

    def set(self, items) -> None:
        """``items``: ``(text, x, y, colour)``; empty texts are dropped."""
        items = tuple((s, float(x), float(y), tuple(c)) for s, x, y, c in items if s)
        if items == self.items:
            return
        self.items = items
        if items:
            self.node.text = [i[0] for i in items]
            self.node.pos = np.array([(i[1], i[2]) for i in items], np.float32)
            self.node.color = [i[3] for i in items]
        self.node.visible = self._on and bool(items)
        self.layer.invalidate()

    def show(self, on: bool) -> None:
        self._on = on
        self.node.visible = on and bool(self.items)
        self.layer.invalidate()

    @property
    def texts(self) -> list[str]:
        return [i[0] for i in self.items]


def _rect(x0, y0, x1, y1, colour) -> tuple[np.ndarray, np.ndarray]:
    pos = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y0], [x1, y1], [x0, y1]], np.float32)
    return pos, np.tile(np.array(colour, np.float32), (6, 1))


class Banner:
    """The mode across the top: ARMED (green) / DISARMED (amber) / KILLED (red) with broker and preset,
    the engine's connection and lag, and the reason of the last mode change or risk trip."""

    HEIGHT = 30
    BOX = 150

    def __init__(self, layer: CachedLayer, fonts):
        self.layer = layer
        self.back = ColoredVertices("triangles", 12, parent=layer.root)
        self.mode = TextBlock(layer, fonts, 11, anchor_x="center", bold=True)
        self.info = TextBlock(layer, fonts, 8.5)  # broker and preset, connection, reason
        self._colour = None

    @property
    def blocks(self) -> list[TextBlock]:
        return [self.mode, self.info]

    @property
    def texts(self) -> list[str]:
        return [t for b in self.blocks for t in b.texts]

    def update(self, v: TradingView) -> None:
        h, y, x = self.HEIGHT, self.HEIGHT / 2, self.BOX + 12
        if not v.running:
            colour, word = NOT_RUNNING, "NO ENGINE"
        else:
            colour, word = MODE_COLOURS.get(v.mode, NOT_RUNNING), v.mode or "?"
        if colour != self._colour:
            self._colour = colour
            tint = tuple(0.35 * c + 0.65 * b for c, b in zip(colour[:3], BACKGROUND[:3])) + (1.0,)
            p0, c0 = _rect(0, 0, 10000, h, tint)
            p1, c1 = _rect(0, 0, self.BOX, h, colour)
            self.back.set_vertices(np.r_[p0, p1], np.r_[c0, c1])
            self.layer.invalidate()
        ink = (0.04, 0.05, 0.06, 1.0) if colour in (ARMED, DISARMED) else (1.0, 1.0, 1.0, 1.0)
        self.mode.set([(word, self.BOX / 2, y, ink)])
        if not v.running:
            why = f"engine: tables unreadable — {v.reason}" if v.reason else \
                "engine: not running — waiting for the trader's tables"
            self.info.set([(why, x, y, ALERT if v.reason else TEXT)])
            return
        hot = (1.0, 0.86, 0.86, 1.0) if v.mode == "KILLED" else ALERT  # alert text on the red banner
        if v.engine == "live":
            lag = f" · lag {v.lag_ms:.1f} ms" if v.lag_ms == v.lag_ms else ""
            at = f" · at {format_market_ms(v.market_ms)}" if v.market_ms else ""
            # the engine writes many times a second: "< 1 s" is the news, a ticking age would only redraw
            age = "< 1 s" if v.age_s < 1 else f"{v.age_s:.0f} s"
            conn, conn_col = f"engine live · updated {age} ago{lag}{at}", TEXT
        else:
            age = f"{v.age_s:.0f} s" if np.isfinite(v.age_s) else "ever"
            conn, conn_col = f"ENGINE NOT RESPONDING · last update {age} ago", hot
        trips = [f for f in v.risk_flags if f in TRIPS]     # a loss limit, not a full house of positions
        tripped = bool(trips) or v.mode == "KILLED"
        reason = f"{'risk: ' if trips else ''}{v.reason}" if v.reason else ""
        self.info.set([(f"{v.broker} · {v.preset} · config v{v.config_version}", x, y, TEXT),
                       (conn, x + 215, y, conn_col), (reason, x + 580, y, hot if tripped else DIM)])


class SidePanel:
    """The right column: price and position, account, order tape, timeline."""

    Y_ACCOUNT, Y_TAPE, Y_TIMELINE = 110, 240, 432

    def __init__(self, layer: CachedLayer, fonts):
        self.layer = layer
        self.widget = layer.widget
        self.rules = ColoredVertices("lines", 6, parent=layer.root)
        y = np.array([[[8, y], [PANEL_WIDTH - 8, y]] for y in (self.Y_ACCOUNT - 10, self.Y_TAPE - 10,
                                                               self.Y_TIMELINE - 10)], np.float32)
        self.rules.set_vertices(y.reshape(-1, 2), np.tile(np.array((0.22, 0.24, 0.28, 1.0), np.float32), (6, 1)))
        self.title = TextBlock(layer, fonts, 12, bold=True)
        self.headers = TextBlock(layer, fonts, 7.5, bold=True)
        self.stats = TextBlock(layer, fonts, 8)                         # position and account
        self.small = TextBlock(layer, fonts, 7.5)                       # tape and timeline
        self.numbers = TextBlock(layer, fonts, 7.5, anchor_x="right")   # the tape's numbers
        self._timeline_items: list = []
        self._timeline_key: tuple | None = None

    @property
    def blocks(self) -> list[TextBlock]:
        return [self.title, self.headers, self.stats, self.small, self.numbers]

    @property
    def texts(self) -> list[str]:
        return [t for b in self.blocks for t in b.texts]

    def update(self, v: TradingView) -> None:
        height = float(self.widget.size[1])
        if height < 50:  # not laid out yet (first frame): what the grid will give the column
            canvas = self.widget.canvas
            height = float(canvas.size[1]) - 12 - Banner.HEIGHT - 40 if canvas is not None else 600.0
        self.headers.set([("ACCOUNT", 10, self.Y_ACCOUNT, DIM), ("ORDERS & FILLS", 10, self.Y_TAPE, DIM),
                          ("TIMELINE", 10, self.Y_TIMELINE, DIM)])
        last = format_krw(v.last_price) if v.last_price == v.last_price else "-"
        self.title.set([(v.market, 10, 16, TEXT), (last, 130, 16, TEXT)])
        self.stats.set(self._position(v) + self._account(v, self.Y_ACCOUNT + 18))
        tape, numbers = self._tape(v.orders, self.Y_TAPE + 16)
        key = (v.timeline, height)
        if key != self._timeline_key:  # entries are few and rarely new: wrap them only then
            self._timeline_key = key
            self._timeline_items = self._timeline(v.timeline, self.Y_TIMELINE + 16, height - 6)
        self.small.set(tape + self._timeline_items)
        self.numbers.set(numbers)

    @staticmethod
    def _position(v: TradingView) -> list:
        """The shown market's position: labels and values."""
        p = v.position
        if p is None:
            return [("no open position" if v.running else "", 10, 42, DIM)]
        pct = p.pnl_pct
        values = [(f"{format_qty(p.qty)} {v.market.split('-')[-1]} @ {format_krw(p.avg_price)}", 80, 40, TEXT),
                  (f"{format_signed_krw(p.unrealized)} KRW ({pct:+.2f}%)" if pct == pct else "-", 80, 57,
                   pnl_colour(p.unrealized)),
                  (_level(p.tp, p.avg_price), 80, 74, TAKE_PROFIT), (_level(p.sl, p.avg_price), 220, 74, STOP_LOSS),
                  (f"{p.entry_tag or '-'} · {format_market_ms(p.opened_ms)}", 80, 91, TEXT)]
        if p.exiting:
            values.append(("EXITING", 250, 57, WARN))
        return [("position", 10, 40, DIM), ("unrealized", 10, 57, DIM), ("TP / SL", 10, 74, DIM),
                ("entry", 10, 91, DIM)] + values

    @staticmethod
    def _account(v: TradingView, y0: float) -> list:
        """The account: labels and values."""
        if not v.running:
            return [("engine: not running", 10, y0, DIM)]
        dd = f"{v.drawdown_pct:.2f}%  (hwm {format_krw(v.hwm)})" if v.drawdown_pct == v.drawdown_pct else "-"
        rows = [(("equity", format_krw(v.equity), TEXT), ("cash", format_krw(v.cash), TEXT)),
                (("realized", format_signed_krw(v.realized), pnl_colour(v.realized)),
                 ("unrealized", format_signed_krw(v.unrealized), pnl_colour(v.unrealized))),
                (("daily P&L", format_signed_krw(v.daily_pnl), pnl_colour(v.daily_pnl)),
                 ("fees", format_krw(v.fees), TEXT)),
                (("drawdown", dd, WARN if v.drawdown_pct >= 1 else TEXT),),
                (("open", f"{_n(v.open_positions, 'position')} · {_n(v.open_orders, 'order')}", TEXT),),
                (("risk blocks", ", ".join(v.risk_flags) or "none", ALERT if v.risk_flags else DIM),)]
        items = []
        for k, row in enumerate(rows):
            y = y0 + 17 * k
            for (label, value, colour), x in zip(row, (10, 205)):
                items += [(label, x, y, DIM), (value, x + 70, y, colour)]
        return items

    @staticmethod
    def _tape(orders: tuple[OrderView, ...], y0: float) -> tuple[list, list]:
        """The order and fill tape: its left-aligned columns and its numbers (right-aligned)."""
        left = [(h, x, y0, DIM) for h, x in (("time", 10), ("mkt", 78), ("side", 112), ("type", 144),
                                             ("state", 330))]
        right = [("price", 258, y0, DIM), ("filled", 322, y0, DIM)]
        if not orders:
            left.append(("no orders yet", 10, y0 + 15, DIM))
        for k, o in enumerate(orders):
            y = y0 + 15 * (k + 1)
            buy = o.side == "bid"
            # what it got (average fill), else what it asks (a limit price); a market order has none yet
            price = o.avg_fill if o.filled > 0 and o.avg_fill > 0 else \
                o.price if o.ord_type == "limit" else float("nan")
            left += [(format_market_ms(o.updated_ms), 10, y, TEXT), (o.market.split("-")[-1], 78, y, TEXT),
                     ("BUY" if buy else "SELL", 112, y, ENTRY if buy else EXIT),
                     ("limit" if o.ord_type == "limit" else "market", 144, y, TEXT),
                     (STATE_NAMES.get(o.state, o.state), 330, y, STATE_COLOURS.get(o.state, WARN))]
            right += [(format_krw(price), 258, y, TEXT), (format_qty(o.filled, 4), 322, y, TEXT)]
        return left, right

    def _timeline(self, entries: tuple[TimelineView, ...], y0: float, bottom: float) -> list:
        """Newest first: time, severity, kind, market, then the text (wrapped to two lines) while there is room."""
        px = self.small.font_size * _PX
        items = []
        y = y0
        line_h = 13
        if not entries:
            items.append(("nothing yet", 10, y, DIM))
        for e in entries:
            if y > bottom:
                break
            items += [(format_market_ms(e.market_ms, "%H:%M:%S"), 10, y, DIM),
                      (e.severity.upper(), 62, y, SEVERITY_COLOURS.get(e.severity, DIM)),
                      (e.kind, 100, y, TEXT), (e.market.split("-")[-1], 160, y, TEXT)]
            room = 1 + int((bottom - y) // line_h)
            lines = wrap(e.text, [PANEL_WIDTH - 200 - 14, PANEL_WIDTH - 30 - 14][:min(2, room)], px)
            for k, line in enumerate(lines):
                items.append((line, 200 if k == 0 else 30, y + k * line_h, TEXT))
            y += max(1, len(lines)) * line_h + 3
        return items
