"""Order flow of the engine (a mixin of :class:`procs.trading.engine.Engine`): write ahead, submit,
apply the broker's events through the order state machine, account the fills.

An order row is committed to the ledger **before** the broker is called; a broker that cannot say
whether the order arrived (:class:`~procs.trading.broker.BrokerUnavailable`) leaves it ``unknown``, and
it is never sent again. A fill is applied once per (identifier, trade id): the ledger's UNIQUE key
refuses a duplicate notification, which is counted and put on the timeline.
"""
from __future__ import annotations

import logging

from render.text import format_krw, format_qty_exact
from shm.trading import ALERT, INFO, WARN

from .broker import BrokerEvent, BrokerUnavailable
from .orders import IllegalTransition, Order, OrderState
from .portfolio import Position

log = logging.getLogger("smtm.trader")


class Execution:
    def _order(self, market: str, side: str, ord_type: str, price: float, volume: float, purpose: str, tag: str,
               position_id: int) -> Order:
        """Write ahead (the row is committed before the broker is called), then submit."""
        self._order_seq += 1
        at = self.trade_ms.get(market, self.market_ms)   # the market's own clock: fills come from its later trades
        o = Order(f"smtm-{self.run_id}-{self._order_seq}", market, side, ord_type, price, volume, purpose, tag,
                  position_id, at, updated_ms=at)
        o.move(OrderState.SUBMITTED, self.market_ms)
        o.wall_ns = self.wall_ns()
        self.ledger.insert_order(o, o.wall_ns)
        self.flush()
        self.orders[o.identifier] = o
        self.orders_version += 1
        what = f"{price:,.0f} KRW" if ord_type == "price" else format_qty_exact(volume)
        self.note("order", market, INFO, f"{side} {ord_type} {what} for {tag} ({o.identifier})")
        try:
            events = self.broker.submit(o)
        except Exception as e:   # BrokerUnavailable, or a broker bug: either way the outcome is unknown
            if not isinstance(e, BrokerUnavailable):
                log.exception("broker %s failed on %s", self.broker.name, o.identifier)
            o.move(OrderState.UNKNOWN, self.market_ms, f"{type(e).__name__}: {e}"[:200])
            self.ledger.update_order(o)
            self.note("unknown", market, ALERT, f"{o.identifier}: outcome unknown ({e}); it will not be re-sent")
            events = []
        for ev in events:
            self._apply(ev)
        self.flush()
        return o

    def _apply(self, ev: BrokerEvent) -> None:
        self._limits_stale = True      # orders, cash or positions may change: the next trade checks the limits
        o = self.orders.get(ev.identifier)
        if o is None:
            if ev.kind == "fill":
                self._late_fill(ev)
            elif ev.kind not in ("filled", "cancelled"):   # the end of an order already closed here is no news
                log.warning("broker event for an order that is not open: %s", ev)
            return
        try:
            if ev.kind == "fill":
                self._fill(o, ev)
            elif ev.kind == "accepted":
                adopted = o.state is OrderState.UNKNOWN
                o.move(OrderState.ACCEPTED, ev.at_ms)
                o.broker_id = ev.broker_id or o.broker_id
                if adopted:
                    self.note("adopted", o.market, WARN, f"{o.identifier} found at the exchange ({o.broker_id}): "
                                                         f"adopted, not re-sent")
            else:
                o.move(OrderState(ev.kind), ev.at_ms, ev.reason)
                self.note(ev.kind, o.market, WARN, f"{o.identifier} {ev.kind}: {ev.reason}")
        except IllegalTransition as e:
            self.illegal += 1
            log.error("%s", e)
            self.note("illegal", o.market, ALERT, str(e)[:110])
            return
        self.ledger.update_order(o)
        self.dirty = self.money_dirty = True
        self.orders_version += 1
        self.emit("ORDER.UPDATE", self.order_view(o), o.market)
        if not o.is_open:
            del self.orders[o.identifier]
            self._order_closed(o)

    def _fill(self, o: Order, ev: BrokerEvent) -> None:
        if not o.is_open:
            raise IllegalTransition(f"fill for {o.identifier}, which is {o.state.value}")
        p = self._position_for(o.market, o.position_id, o.side)
        if p is None:
            raise IllegalTransition(f"fill for {o.identifier} but its position {o.position_id} cannot take it")
        if not self.ledger.insert_fill(o.identifier, o.market, o.side, ev.price, ev.volume, ev.fee, ev.at_ms,
                                       ev.trade_id, o.position_id):
            self.duplicate_fills += 1
            self.note("duplicate", o.market, WARN, f"fill of {o.identifier} on trade {ev.trade_id} seen twice: ignored")
            return
        o.add_fill(ev.price, ev.volume, ev.fee, ev.at_ms)
        self._book(o, p, ev)

    def _book(self, o: Order, p, ev: BrokerEvent) -> None:
        """A fill's money: cash, fees, the position (and its end when the last unit is sold)."""
        self.fees += ev.fee
        self.dirty = self.money_dirty = self._limits_stale = True
        if o.side == "bid":
            self.cash -= p.buy(ev.price, ev.volume, ev.fee, self.params.take_profit_pct, self.params.stop_loss_pct)
            text = (f"bought {format_qty_exact(ev.volume)} at {format_krw(ev.price)} (TP {format_krw(p.tp)} / "
                    f"SL {format_krw(p.sl)})")
        else:
            cash, pnl = p.sell(ev.price, ev.volume, ev.fee, ev.at_ms, o.tag)
            self.cash += cash
            self.realized += pnl
            text = f"sold {format_qty_exact(ev.volume)} at {format_krw(ev.price)} on {o.tag}: P&L {pnl:+,.0f} KRW"
        self.ledger.save_position(p)
        self.note("fill", o.market, INFO, text)
        self.emit("FILL", {"identifier": o.identifier, "price": ev.price, "volume": ev.volume, "fee": ev.fee,
                           "side": o.side, "t_ms": ev.at_ms}, o.market)
        if p.state == "closed":
            del self.positions[o.market]
            self.note("closed", o.market, INFO, f"position closed on {p.exit_reason}: P&L {p.realized:+,.0f} KRW")

    def _late_fill(self, ev: BrokerEvent) -> None:
        """A fill the exchange reports for an order already closed here (cancelled while a trade was filling
        it): booked all the same, to the order's position — reopened if it had been given up as void."""
        row = self.ledger.order(ev.identifier)
        if row is None:
            log.error("fill for an order the ledger does not know: %s", ev)
            return
        p = self._position_for(row["market"], row["position_id"], row["side"])
        if p is None:
            return
        o = self._order_from_row(row)
        if not self.ledger.insert_fill(o.identifier, o.market, o.side, ev.price, ev.volume, ev.fee, ev.at_ms,
                                       ev.trade_id, o.position_id):
            self.duplicate_fills += 1
            return
        o.accumulate(ev.price, ev.volume, ev.fee)
        self.ledger.update_order(o)
        self._book(o, p, ev)
        self.note("late_fill", o.market, WARN, f"fill of {o.identifier} ({o.state.value}) reported late: booked")

    def _position_for(self, market: str, position_id: int, side: str) -> Position | None:
        """The position a fill belongs to: the open one, or its ledger row brought back — a buy fill for a
        position given up as void, or closed by an exit while the rest of its entry was still filling,
        opens it again. None (logged) if it cannot take the fill."""
        p = self.positions.get(market)
        if p is not None:
            if p.id == position_id:
                return p
            log.error("fill for position %d in %s while position %d is open there: not booked", position_id,
                      market, p.id)
            return None
        row = self.ledger.position(position_id)
        if row is None or (side == "ask" and row["state"] != "open"):
            log.error("fill for position %d in %s, which is %s: not booked", position_id, market,
                      row["state"] if row is not None else "unknown")
            return None
        p = Position(**dict(row))
        p.last_price = self.last_price.get(market, p.avg_price)
        self.positions[market] = p
        return p

    def _order_closed(self, o: Order) -> None:
        p = self.positions.get(o.market)
        if p is None or p.id != o.position_id:
            return
        if p.state == "pending":          # the entry never filled
            p.state = "void"
            self.ledger.save_position(p)
            del self.positions[o.market]
