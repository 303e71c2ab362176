"""The broker interface the engine talks to, and the paper broker.

A broker turns the engine's orders into exchange orders and reports back with :class:`BrokerEvent`s
(accepted, fill, filled, cancelled, rejected, expired, unknown); the engine applies them through the order
state machine (:mod:`.orders`). Two implementations share this interface: :class:`PaperBroker`
(simulated fills on the real trade stream, :mod:`.fills`) here, and :class:`~procs.trading.upbit_broker.
UpbitBroker` (signed orders to Upbit's exchange API, or the replay exchange's). ``real`` says whether the
orders go to an exchange: the engine refuses to come back ARMED after a restart for a real broker, whatever
the configuration says, and checks the account (:meth:`Broker.check_account`) before every ARM.

Contract: :meth:`Broker.submit` is called only after the order row is committed to the ledger
(write-ahead); it may raise :class:`BrokerUnavailable` (the engine then marks the order ``unknown``
and never sends it again); :meth:`Broker.reconcile` is called on start with the ledger's open orders
and says what became of each; :meth:`Broker.poll` is called every engine loop (unknown orders resolved,
open orders refreshed); :meth:`Broker.cancel_all` is the kill switch's cancel.
"""
from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Protocol

from .fills import FillModel, filled_up
from .orders import Order, OrderState


@dataclass(frozen=True)
class BrokerEvent:
    """What happened to one order. ``kind``: ``accepted`` | ``fill`` | ``filled`` | ``cancelled`` |
    ``rejected`` | ``expired`` | ``unknown``. Fill events carry ``price`` (KRW), ``volume`` (base), ``fee``
    (KRW), ``at_ms`` (the trade's market time) and ``trade_id`` (the exchange trade's id — Upbit's trade
    uuid, the paper broker's sequential_id as text: a fill is applied once per (identifier, trade_id))."""
    kind: str
    identifier: str
    at_ms: int
    price: float = 0.0
    volume: float = 0.0
    fee: float = 0.0
    trade_id: str = ""
    reason: str = ""
    broker_id: str = ""


class BrokerUnavailable(RuntimeError):
    """The request may not have reached the exchange (timeout, reset, 5xx): the outcome is unknown."""


class Broker(Protocol):
    name: str
    real: bool
    reconnected: bool               #: the exchange answers again after failures: the engine checks the account
    round_trips_us: Sized           #: the latest order round trips (µs) to the exchange; empty for paper

    def submit(self, order: Order) -> list[BrokerEvent]: ...
    def cancel(self, order: Order, at_ms: int, reason: str) -> list[BrokerEvent]: ...
    def cancel_all(self, orders: list[Order], at_ms: int, reason: str) -> list[BrokerEvent]: ...
    def on_trade(self, market: str, t_ms: int, price: float, volume: float, trade_id) -> list[BrokerEvent]: ...
    def poll(self, at_ms: int) -> list[BrokerEvent]: ...
    def refresh_all(self, at_ms: int) -> list[BrokerEvent]: ...
    def reconcile(self, open_orders: list[Order], at_ms: int, known_fills: dict[str, set[str]]
                  ) -> list[BrokerEvent]: ...
    def starting_cash(self) -> float | None: ...
    def check_account(self, cash: float, holdings: dict[str, float], prices: dict[str, float],
                      known: Callable[[str], str | None]) -> list[str]: ...


class PaperBroker:
    """Simulated exchange: accepts every valid order at once and fills it on later trades of its
    market with :class:`~procs.trading.fills.FillModel`. Its book is the set of open orders it was
    given; only trades at or after an order's ``created_ms`` (its market's last trade when it was made)
    fill it. After a restart :meth:`reconcile` adopts the ledger's accepted orders (as an exchange
    would still hold them) and reports the ones it never accepted — ``new`` as cancelled, ``submitted``
    / ``unknown`` as rejected — and they are never sent again (the live broker looks those up instead)."""

    name = "paper"
    real = False
    reconnected = False             # nothing to reconnect to
    round_trips_us: tuple = ()      # no exchange

    def __init__(self, model: FillModel):
        self.model = model
        self.book: dict[str, Order] = {}

    def submit(self, order: Order) -> list[BrokerEvent]:
        self.book[order.identifier] = order
        return [BrokerEvent("accepted", order.identifier, order.created_ms, broker_id=order.identifier)]

    def cancel(self, order: Order, at_ms: int, reason: str) -> list[BrokerEvent]:
        if self.book.pop(order.identifier, None) is None:
            return []
        return [BrokerEvent("cancelled", order.identifier, at_ms, reason=reason)]

    def cancel_all(self, orders: list[Order], at_ms: int, reason: str) -> list[BrokerEvent]:
        return [ev for o in orders for ev in self.cancel(o, at_ms, reason)]

    def poll(self, at_ms: int) -> list[BrokerEvent]:
        return []

    def refresh_all(self, at_ms: int) -> list[BrokerEvent]:
        return []

    def starting_cash(self) -> float | None:
        return None     # a new paper ledger starts with trader.starting_cash

    def check_account(self, cash, holdings, prices, known) -> list[str]:
        return []       # the paper account is the ledger

    def on_trade(self, market: str, t_ms: int, price: float, volume: float, trade_id) -> list[BrokerEvent]:
        if not self.book:
            return []
        out = []
        for o in [o for o in self.book.values() if o.market == market and t_ms >= o.created_ms]:
            f = self.model.match(o.side, o.ord_type, o.price, o.remaining, price, volume)
            if f is None:
                continue
            out.append(BrokerEvent("fill", o.identifier, t_ms, f.price, f.volume, f.fee, str(trade_id)))
            done = filled_up(o.price, o.filled_krw + f.price * f.volume) if o.ord_type == "price" \
                else filled_up(o.volume, o.filled + f.volume)
            if done:
                del self.book[o.identifier]
        return out

    def reconcile(self, open_orders: list[Order], at_ms: int, known_fills=None) -> list[BrokerEvent]:
        out = []
        for o in open_orders:
            if o.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED):
                self.book[o.identifier] = o
            elif o.state in (OrderState.NEW, OrderState.SUBMITTED, OrderState.UNKNOWN):
                kind = "cancelled" if o.state is OrderState.NEW else "rejected"
                out.append(BrokerEvent(kind, o.identifier, at_ms,
                                       reason="not at the broker after a restart; never re-sent"))
        return out
