"""Orders: the lifecycle as an explicit transition table, and client order identifiers.

States (:class:`OrderState`) and the moves allowed between them (:data:`TRANSITIONS`)::

    new ──► submitted ──► accepted ──► partially_filled ──► filled
     │          │   │         │  │            │  │
     │          │   │         │  └──► cancelled / expired ◄┘
     │          │   └──► rejected
     │          └──► unknown ──► (accepted, partially_filled, filled, cancelled, rejected, expired)
     └──► cancelled (never sent)

``submitted``: the order row is committed to the ledger and the request is going to the broker.
``unknown``: the request may or may not have reached the exchange (a timeout, a reset, a 5xx on the
live broker): it is resolved by looking the identifier up, never by sending again. ``filled``,
``cancelled``, ``rejected`` and ``expired`` are closed: a closed order never changes. Any other move
raises :class:`IllegalTransition` (and the engine logs it). Model: nautilus_trader's order FSM
(a transition table keyed by (state, event)), reduced to states here.

Identifiers follow Upbit's rule (``identifier`` unique across all of an account's orders, forever,
even for failed orders): ``smtm-<run id>-<n>``, where the run id is new at every process start
(time in base 36 + 40 random bits) and ``n`` counts within the run; the ledger also keeps a UNIQUE
constraint on it. At most 64 characters.
"""
from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field

from .fills import filled_up

__all__ = ["CLOSED", "IllegalTransition", "Order", "OrderState", "TRANSITIONS", "new_run_id"]


class OrderState(enum.StrEnum):
    NEW = "new"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


S = OrderState
#: state -> the states it may move to. A partially filled order may be partially filled again.
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.NEW: frozenset({S.SUBMITTED, S.CANCELLED}),
    S.SUBMITTED: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELLED, S.UNKNOWN}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.UNKNOWN: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}
CLOSED = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
OPEN = frozenset(OrderState) - CLOSED


class IllegalTransition(RuntimeError):
    """An order was asked to move where the transition table does not allow (a bug or a broker
    message out of order); the order is left unchanged."""


def new_run_id() -> str:
    """A run identifier never seen before: milliseconds since the epoch in base 36 plus 40 random
    bits in hex (18 characters; two starts in the same millisecond collide with odds ~1e-12)."""
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return f"{out}{os.urandom(5).hex()}"


@dataclass
class Order:
    """One order. Money in KRW (float64), volumes in base units, times in market ms (Unix ms UTC).

    ``ord_type``: ``"price"`` = market buy spending ``price`` KRW (Upbit's ord_type ``price``),
    ``"market"`` = market sell of ``volume``, ``"limit"`` = ``volume`` at ``price`` (on the tick
    grid). ``purpose`` is ``"entry"`` or ``"exit"``; ``tag`` the entry rule or the exit reason.
    """
    identifier: str
    market: str
    side: str               #: "bid" (buy) | "ask" (sell)
    ord_type: str           #: "price" | "market" | "limit"
    price: float            #: limit price, or the KRW total of a market buy; 0 for a market sell
    volume: float           #: base units; 0 for a market buy
    purpose: str
    tag: str
    position_id: int
    created_ms: int
    state: OrderState = OrderState.NEW
    updated_ms: int = 0
    filled: float = 0.0         #: base units filled
    filled_krw: float = 0.0     #: sum of price x volume of the fills
    fee: float = 0.0            #: KRW paid in fees
    reason: str = ""            #: why it was cancelled / rejected / expired, or is unknown
    broker_id: str = ""         #: the broker's order id (Upbit uuid; paper: the identifier)
    wall_ns: int = 0            #: wall clock (Unix ns) when the row was committed, just before it was sent
    history: list[tuple[str, str]] = field(default_factory=list, repr=False)  #: (from, to) moves this run

    @property
    def is_open(self) -> bool:
        return self.state in OPEN

    @property
    def avg_fill(self) -> float:
        return self.filled_krw / self.filled if self.filled > 0 else 0.0

    @property
    def remaining(self) -> float:
        """What is left: KRW for a market buy, base units otherwise."""
        if self.ord_type == "price":
            return max(self.price - self.filled_krw, 0.0)
        return max(self.volume - self.filled, 0.0)

    def move(self, to: OrderState, at_ms: int, reason: str = "") -> None:
        """Move to ``to``; raises :class:`IllegalTransition` if the table forbids it."""
        to = OrderState(to)
        if to not in TRANSITIONS[self.state]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[self.state])) or "none, it is closed"
            raise IllegalTransition(f"order {self.identifier}: {self.state.value} -> {to.value} is not allowed "
                                    f"(allowed: {allowed})")
        self.history.append((self.state.value, to.value))
        self.state = to
        self.updated_ms = max(self.updated_ms, at_ms)
        if reason:
            self.reason = reason

    def add_fill(self, price: float, volume: float, fee: float, at_ms: int) -> None:
        """Record a fill and move to partially_filled / filled. Raises IllegalTransition on a closed order."""
        done = filled_up(self.price, self.filled_krw + price * volume) if self.ord_type == "price" \
            else filled_up(self.volume, self.filled + volume)
        self.move(OrderState.FILLED if done else OrderState.PARTIALLY_FILLED, at_ms)
        self.accumulate(price, volume, fee)

    def accumulate(self, price: float, volume: float, fee: float) -> None:
        """Add a fill to the order's totals without moving its state (a fill reported after it closed)."""
        self.filled += volume
        self.filled_krw += price * volume
        self.fee += fee
