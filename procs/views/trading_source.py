"""The monitor's view of the trading engine: the ``trader``, ``positions`` and ``orders`` tables, the
``timeline.trader`` ring and the shown market's last trade (``trades``), all mapped **read-only**.

Cheap to poll every frame: one 8-byte load of each table's global ``seq``; the view is rebuilt
(a few small copies) only when one of them moved — at most ``MAX_RATE_HZ`` times a second: people
read no faster, and each new text costs a redraw of the column (``render.layer``) — and every
``REFRESH_S`` anyway, so that the engine's age and the "not
responding" state follow the clock even when nothing is written. Tables that do not exist yet
(the trader or ingest not started) are looked for again once a second; until the trader's exist
the view says ``engine: not running``. A copy that cannot get a consistent read keeps the
previous view.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from render.snapshot import OrderView, PositionView, TimelineView, TradingView
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.seqlock import SeqlockTimeout
from shm.status import StatusTable
from shm.tables import TIMELINE, TIMELINE_ROW, TRADES
from shm.trading import MODE_NAMES, RISK_FLAG_NAMES, SEVERITY_NAMES, OrdersTable, PositionsTable, TraderTable, text

from ..runtime.config import BaseConfig

STALE_S = 2.0        #: the engine's last write older than this: "not responding"
REFRESH_S = 0.5      #: rebuild at least this often (the age shown)
MAX_RATE_HZ = 5.0    #: rebuild at most this often when the tables move (each rebuild may redraw the text)
ORDERS_SHOWN = 10
TIMELINE_SHOWN = 8


#: the engine's tables and the trade tape, each attached read-only at the instance's sizes: ``open(base)``
ENGINE_TABLES = {
    "trader": lambda b: TraderTable.open(b.instance, 1),
    "positions": lambda b: PositionsTable.open(b.instance, b.shm.rows),
    "orders": lambda b: OrdersTable.open(b.instance, b.shm.orders_rows),
    "timeline": lambda b: TIMELINE.open(b.instance, None, 1, b.shm.timeline_capacity),
    "trades": lambda b: TRADES.open(b.instance, None, b.shm.rows, b.shm.trades_capacity),
}


class ShmTradingSource:
    """The engine's tables, read-only: :meth:`poll` each frame, :meth:`view` when it said so."""

    def __init__(self, base: BaseConfig, status: StatusTable | None = None):
        self.base = base
        self.status = status            # the monitor's status table (for the trader's lag), may come later
        self.trader: TraderTable | None = None
        self.positions: PositionsTable | None = None
        self.orders: OrdersTable | None = None
        self.timeline = None
        self.trades = None
        self._last_attach = 0.0
        self.attach_error = ""
        self._key: tuple | None = None
        self._moved = True
        self._built = -1e9
        self._view = TradingView()

    def close(self) -> None:
        for name in ("trader", "positions", "orders", "timeline", "trades"):
            t = getattr(self, name)
            if t is not None:
                t.close()
                setattr(self, name, None)

    # -- attaching -----------------------------------------------------------------------
    def _attach(self) -> None:
        for name, open_ in ENGINE_TABLES.items():
            if getattr(self, name) is None:
                try:
                    setattr(self, name, open_(self.base))
                    self._moved = True
                except LayoutMismatch as e:  # another configuration wrote it: say so, keep trying
                    self.attach_error = str(e).splitlines()[0]
                except (SegmentNotFound, SegmentNotReady):
                    pass

    def _complete(self) -> bool:
        return None not in (self.trader, self.positions, self.orders, self.timeline, self.trades)

    # -- polling -------------------------------------------------------------------------
    def poll(self, market: str) -> bool:
        """Should the view be rebuilt? A few 8-byte loads; never blocks."""
        now = time.monotonic()
        if not self._complete() and now - self._last_attach >= 1.0:
            self._last_attach = now
            self._attach()
        key = (market,) + tuple(-1 if t is None else t.seg.global_seq
                                for t in (self.trader, self.positions, self.orders, self.timeline, self.trades))
        if key != self._key:
            self._key = key
            self._moved = True
        since = now - self._built
        return (self._moved and since >= 1.0 / MAX_RATE_HZ) or since >= REFRESH_S

    def view(self, market: str) -> TradingView:
        """The engine's state with ``market`` as the shown market (copies of the small tables)."""
        self._built = time.monotonic()
        self._moved = False
        try:
            self._view = self._build(market)
        except SeqlockTimeout:
            self._moved = True  # try again on a later frame; keep the previous view
            if self._view.market != market:
                self._view = replace(TradingView(), market=market)
        return self._view

    # -- building ------------------------------------------------------------------------
    def _build(self, market: str) -> TradingView:
        last = self._last_price(market)
        if self.trader is None:
            return TradingView(market=market, last_price=last, reason=self.attach_error, orders=self._orders(),
                               timeline=self._timeline())
        st = self.trader.state(max_spins=2000)
        age = (time.monotonic_ns() - int(st["updated_ns"])) / 1e9 if st["updated_ns"] else float("inf")
        flags = tuple(name for bit, name in RISK_FLAG_NAMES.items() if int(st["risk_flags"]) & bit)
        rows = self.orders.recent(max_spins=2000) if self.orders is not None else None
        fills = self._fills(rows, market)
        position = self._position(market)
        if last != last and position is not None:
            last = position.last_price
        return TradingView(
            engine="live" if age <= STALE_S else "not responding",
            mode=MODE_NAMES.get(int(st["mode"]), f"mode {int(st['mode'])}"),
            broker=text(st["broker"]), preset=text(st["preset"]), config_version=int(st["config_version"]),
            age_s=age, lag_ms=self._lag_ms(), reason=text(st["reason"]), risk_flags=flags,
            cash=float(st["cash"]), equity=float(st["equity"]), realized=float(st["realized"]),
            unrealized=float(st["unrealized"]), daily_pnl=float(st["daily_pnl"]), fees=float(st["fees"]),
            hwm=float(st["hwm"]), drawdown_pct=float(st["drawdown_pct"]),
            open_positions=int(st["open_positions"]), open_orders=int(st["open_orders"]),
            market_ms=int(st["market_ms"]), market=market, last_price=last, position=position,
            fill_ms=fills[0], fill_price=fills[1], fill_entry=fills[2],
            orders=self._orders(rows), timeline=self._timeline())

    def _last_price(self, market: str) -> float:
        if self.trades is None:
            return float("nan")
        got = self.trades.read_last_of(market, 1, max_spins=2000)
        return float(got[0]["price"][-1]) if got is not None and len(got[0]) else float("nan")

    def _lag_ms(self) -> float:
        if self.status is None:
            return float("nan")
        try:
            r = self.status.read("trader", max_spins=1000)
        except (SeqlockTimeout, KeyError):
            return float("nan")
        lag = int(r["lag_ns"])
        return lag / 1e6 if r["pid"] and lag > 0 else float("nan")  # 0: the engine reports none

    def _position(self, market: str) -> PositionView | None:
        if self.positions is None:
            return None
        rows = self.positions.open_positions(max_spins=2000)
        rows = rows[rows["code"] == market.encode()]
        if not len(rows):
            return None
        p = rows[0]
        return PositionView(qty=float(p["qty"]), avg_price=float(p["avg_price"]), cost=float(p["cost"]),
                            tp=float(p["tp"]), sl=float(p["sl"]), last_price=float(p["last_price"]),
                            unrealized=float(p["unrealized"]), entry_tag=text(p["entry_tag"]),
                            opened_ms=int(p["opened_ms"]), exiting=bool(p["exiting"]))

    @staticmethod
    def _fills(rows: np.ndarray | None, market: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shown market's (partly) filled orders, oldest first: time, average fill price, entry?"""
        if rows is None or not len(rows):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
        f = rows[(rows["code"] == market.encode()) & (rows["filled"] > 0) & (rows["avg_fill"] > 0)][::-1]
        return f["updated_ms"].astype(np.int64), f["avg_fill"].astype(np.float64), f["side"] == b"bid"

    def _orders(self, rows: np.ndarray | None = None) -> tuple[OrderView, ...]:
        if rows is None:
            if self.orders is None:
                return ()
            rows = self.orders.recent(max_spins=2000)
        return tuple(OrderView(updated_ms=int(o["updated_ms"]) or int(o["created_ms"]), market=text(o["code"]),
                               side=text(o["side"]), ord_type=text(o["ord_type"]), price=float(o["price"]),
                               volume=float(o["volume"]), filled=float(o["filled"]), avg_fill=float(o["avg_fill"]),
                               state=text(o["state"]), reason=text(o["reason"]))
                     for o in rows[:ORDERS_SHOWN])

    def _timeline(self) -> tuple[TimelineView, ...]:
        if self.timeline is None:
            return ()
        got = self.timeline.read_last_of(TIMELINE_ROW, TIMELINE_SHOWN, max_spins=2000)
        if got is None:
            return ()
        return tuple(TimelineView(market_ms=int(e["market_ms"]),
                                  severity=SEVERITY_NAMES.get(int(e["severity"]), "info"), kind=text(e["kind"]),
                                  market=text(e["market"]), text=text(e["text"]))
                     for e in got[0][::-1])
