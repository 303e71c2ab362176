"""The Upbit broker: the engine's orders as signed requests to Upbit's exchange API
(:class:`~procs.upbit.exchange.ExchangeClient`) — api.upbit.com in the live profile, the replay exchange's
identical API in tests and in ``smtm up --profile replay --broker upbit``.

The rules that make an order impossible to send twice or to lose:

* **Write ahead, never retry a POST.** The engine commits the order row (``synchronous=FULL``) before
  :meth:`UpbitBroker.submit`; the POST goes out once. An Upbit error answer (4xx with a name) is a
  rejection; anything else — a timeout, a reset, a 5xx, a 429 — makes the order ``unknown``
  (:class:`~procs.trading.broker.BrokerUnavailable`).
* **Unknown orders are looked up, never re-sent**: ``GET /v1/order?identifier=`` with backoff (0.5 s
  doubling to 8 s). Found → adopted (its state and fills). Not found → still unknown until
  ``unknown_grace_s`` has passed since the request was sent (a request still travelling could land);
  after that, definitively not placed: rejected with that reason. The identifier is burnt either way.
* **Fills** come from the order's ``trades`` (``GET /v1/order``), polled on the trades of its market (at
  most every ``poll_s``) and every ``refresh_s``; each trade ``uuid`` is reported once (and the ledger's
  UNIQUE (identifier, trade id) refuses it again after a restart). The fee of a fill is its funds times the
  side's fee from ``GET /v1/orders/chance``.
* **Restart** (:meth:`UpbitBroker.reconcile`): every open order of the ledger is looked up (by uuid, or by
  identifier if it never got one). **Account check** (:meth:`UpbitBroker.check_account`, before any ARM
  and after a reconnect): open and recent closed orders the ledger does not know, cash or coins that
  differ from the ledger, fees or minimums that differ from the configuration — each is a problem that
  keeps the engine DISARMED.
* **Kill** (:meth:`UpbitBroker.cancel_all`): ``DELETE /v1/orders/open``, then ``GET /v1/orders/open``
  must come back empty (else each remaining order is cancelled on its own), then every order of ours is
  read back for its final state and fills.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..runtime.config import UpbitBrokerConfig
from ..upbit.exchange import ExchangeClient, ExchangeRejected, ExchangeUnreachable, decimal, parse_time_ms
from .broker import BrokerEvent, BrokerUnavailable
from .orders import Order, OrderState

log = logging.getLogger("smtm.broker")

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def backoff_s(attempt: int) -> float:
    """The wait before attempt ``attempt + 1`` (0.5 s doubling to 8 s)."""
    return BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]


@dataclass
class Tracked:
    """An order of ours at the exchange (or maybe at the exchange: ``unknown``)."""
    order: Order                      #: the engine's order (the same object the engine moves)
    uuid: str = ""
    seen: set[str] = field(default_factory=set)   #: trade uuids already reported
    unknown_since_ns: int = 0         #: wall ns the request was sent (unknown orders)
    lookups: int = 0
    next_lookup: float = 0.0          #: monotonic s
    accepted_sent: bool = False       #: the engine has had its ``accepted`` (never twice)
    cancel_requested: bool = False    #: cancel it as soon as it is found (a cancel or KILL while unknown)
    cancel_sent: float = 0.0          #: monotonic s of the last DELETE (not repeated within a second)


class UpbitBroker:
    name = "upbit"
    real = True

    def __init__(self, client: ExchangeClient, cfg: UpbitBrokerConfig, *, fee_rate: float, min_order_krw: float,
                 markets: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns):
        self.client, self.cfg = client, cfg
        self.fee_rate, self.min_order_krw = fee_rate, min_order_krw
        self.markets = markets
        self.clock, self.wall_ns = clock, wall_ns
        self.tracked: dict[str, Tracked] = {}        # identifier -> tracked (open or unknown)
        self.fees: dict[str, tuple[float, float]] = {}   # market -> (bid fee, ask fee) from orders/chance
        self._polled: dict[str, float] = {}          # market -> last poll (monotonic)
        self._refreshed = 0.0
        self.failing = False        # the last call found the exchange unreachable ...
        self._probe_at = 0.0        # ... so only one probe call goes out per backoff period (monotonic s)
        self._failures = 0
        self.reconnected = False    # calls succeed again after failures: the engine checks the account
        self.round_trips_us: deque[float] = deque(maxlen=100_000)   # POST /v1/orders round trips, us
        self.lookups = self.adopted = self.not_found = 0

    # -- plumbing ---------------------------------------------------------------------------------------
    def _ok(self) -> None:
        self._failures = 0
        if self.failing:
            self.failing, self.reconnected = False, True
            log.warning("the exchange answers again")

    def _down(self, e: Exception) -> None:
        if not self.failing:
            log.warning("the exchange is unreachable: %s", e)
        self.failing = True
        self._probe_at = self.clock() + backoff_s(self._failures)
        self._failures += 1

    def _may_poll(self) -> bool:
        """While the exchange is unreachable, reads wait for the next probe (no timeout per trade under the
        engine's lock)."""
        return not self.failing or self.clock() >= self._probe_at

    def _fee(self, market: str, side: str) -> float:
        if market not in self.fees:
            try:
                c = self.client.chance(market)
                self.fees[market] = (float(c["bid_fee"]), float(c["ask_fee"]))
            except (ExchangeRejected, ExchangeUnreachable, KeyError, TypeError, ValueError) as e:
                log.warning("orders/chance %s: %s; fees from trader.fee_rate", market, e)
                return self.fee_rate
        bid, ask = self.fees[market]
        return bid if side == "bid" else ask

    @staticmethod
    def body(o: Order) -> dict:
        """The POST body of an engine order (Upbit's field names; numbers as decimal strings)."""
        b: dict = {"market": o.market, "side": o.side}
        if o.ord_type == "price":
            b.update(price=decimal(o.price), ord_type="price")
        elif o.ord_type == "market":
            b.update(volume=decimal(o.volume), ord_type="market")
        else:
            b.update(volume=decimal(o.volume), price=decimal(o.price), ord_type="limit")
        b["identifier"] = o.identifier
        return b

    # -- the broker interface ---------------------------------------------------------------------------
    def submit(self, order: Order) -> list[BrokerEvent]:
        self._fee(order.market, order.side)     # known before the first fill (cached after the first order)
        try:
            r = self.client.place(self.body(order))
        except ExchangeRejected as e:
            self._ok()
            return [BrokerEvent("rejected", order.identifier, order.updated_ms, reason=f"{e.name}: {e.message}")]
        except ExchangeUnreachable as e:
            self._down(e)
            self._unknown(order)     # the grace period runs from now: the request may still be travelling
            raise BrokerUnavailable(str(e)) from None
        self.round_trips_us.append(self.client.last_rtt_us)
        self._ok()
        uuid = r.get("uuid") if isinstance(r, dict) else None
        if not isinstance(uuid, str) or not uuid:
            self._unknown(order)
            raise BrokerUnavailable(f"POST /v1/orders answered without an order uuid: {str(r)[:120]}")
        t = self.tracked[order.identifier] = Tracked(order, uuid=uuid)
        if r.get("state") in ("done", "cancel"):   # already over: its trades are read back, never guessed
            return self._refresh(t, order.updated_ms)
        return self._events(t, r, order.updated_ms)

    def _unknown(self, order: Order) -> None:
        self.tracked[order.identifier] = Tracked(order, unknown_since_ns=self.wall_ns(),
                                                 next_lookup=self.clock() + backoff_s(0))

    def on_trade(self, market: str, t_ms: int, price: float, volume: float, trade_id) -> list[BrokerEvent]:
        """Poll the open orders of ``market`` (at most every ``poll_s``): fills of this trade are read now."""
        mine = [t for t in self.tracked.values() if t.order.market == market and t.uuid]
        if not mine or not self._may_poll():
            return []
        now = self.clock()
        if self.cfg.poll_s and now - self._polled.get(market, 0.0) < self.cfg.poll_s:
            return []
        self._polled[market] = now
        out: list[BrokerEvent] = []
        for t in mine:
            out += self._refresh(t, t_ms)
        return out

    def poll(self, at_ms: int) -> list[BrokerEvent]:
        """Periodic work (the engine calls it every loop): unknown orders looked up when due, every open order
        refreshed every ``refresh_s``."""
        now = self.clock()
        out: list[BrokerEvent] = []
        if not self._may_poll():
            return out
        looked = [t for t in self.tracked.values() if not t.uuid and now >= t.next_lookup]
        for t in looked:
            out += self._resolve(t, at_ms)
        if now - self._refreshed >= self.cfg.refresh_s:
            self._refreshed = now
            for t in [t for t in self.tracked.values() if t.uuid and t not in looked]:
                out += self._refresh(t, at_ms)
        return out

    def refresh_all(self, at_ms: int) -> list[BrokerEvent]:
        """Every open order read back now (before the account is compared with the ledger)."""
        out: list[BrokerEvent] = []
        for t in [t for t in self.tracked.values() if t.uuid]:
            out += self._refresh(t, at_ms)
        return out

    def cancel(self, order: Order, at_ms: int, reason: str) -> list[BrokerEvent]:
        """``DELETE /v1/order``, then the order read back: its fills and, once final, ``cancelled``. An order
        whose fate is unknown cannot be cancelled by uuid: by identifier, if the exchange has it."""
        t = self.tracked.get(order.identifier)
        if t is None:
            return []
        t.cancel_requested = True       # an unknown order found later is cancelled at once
        if self.clock() - t.cancel_sent < 1.0:
            return []                   # asked a moment ago: Upbit completes cancels asynchronously
        t.cancel_sent = self.clock()
        try:
            self.client.cancel(uuid=t.uuid) if t.uuid else self.client.cancel(identifier=order.identifier)
        except ExchangeRejected as e:
            self._ok()
            log.info("cancel %s: %s (reading it back)", order.identifier, e)
        except ExchangeUnreachable as e:
            self._down(e)
            return []
        return self._read_back(t, at_ms, reason)

    def cancel_all(self, orders: list[Order], at_ms: int, reason: str) -> list[BrokerEvent]:
        """The kill switch: ``DELETE /v1/orders/open``, verified by ``GET /v1/orders/open`` (each order still
        open is cancelled on its own), then every order of ours read back."""
        for t in self.tracked.values():
            t.cancel_requested = True
        try:
            self.client.cancel_open()
            left = [r for r in self.client.open_orders() if r.get("state") == "wait"]
            for r in left:
                try:
                    self.client.cancel(uuid=r["uuid"])
                except ExchangeRejected as e:       # already done or cancelled meanwhile
                    log.info("kill: cancel %s: %s", r.get("uuid"), e)
            if left:
                log.warning("kill: %d orders still open after the batch cancel were cancelled one by one", len(left))
            self._ok()
        except (ExchangeRejected, ExchangeUnreachable) as e:
            log.error("kill: the batch cancel failed (%s): cancelling order by order", e)
            out: list[BrokerEvent] = []
            for o in orders:
                out += self.cancel(o, at_ms, reason)
            return out
        out = []
        for o in orders:
            t = self.tracked.get(o.identifier)
            if t is not None:
                out += self._read_back(t, at_ms, reason)
        return out

    # -- reading orders back ----------------------------------------------------------------------------
    def _read_back(self, t: Tracked, at_ms: int, reason: str = "") -> list[BrokerEvent]:
        """What the exchange says of an order now: by its uuid, or (unknown) looked up by identifier."""
        return self._refresh(t, at_ms, reason) if t.uuid else self._resolve(t, at_ms, reason)

    def _later(self, t: Tracked) -> None:
        """The next lookup of an unknown order, after the backoff."""
        t.next_lookup = self.clock() + backoff_s(t.lookups)
        t.lookups += 1

    def _refresh(self, t: Tracked, at_ms: int, reason: str = "") -> list[BrokerEvent]:
        try:
            r = self.client.order(uuid=t.uuid)
        except (ExchangeRejected, ExchangeUnreachable) as e:
            self._down(e) if isinstance(e, ExchangeUnreachable) else log.error("order %s: %s", t.uuid, e)
            return []
        self._ok()
        if r is None:   # an order the exchange gave us a uuid for cannot vanish: say so, keep asking
            log.error("the exchange does not know order %s (%s)", t.uuid, t.order.identifier)
            return []
        return self._events(t, r, at_ms, reason)

    def _resolve(self, t: Tracked, at_ms: int, reason: str = "") -> list[BrokerEvent]:
        """Look an unknown order up by identifier: adopted if found; rejected if not found once the grace
        period since it was sent has passed; else asked again later (backoff)."""
        o = t.order
        self.lookups += 1
        try:
            r = self.client.order(identifier=o.identifier)
        except (ExchangeRejected, ExchangeUnreachable) as e:
            self._down(e) if isinstance(e, ExchangeUnreachable) else log.error("lookup %s: %s", o.identifier, e)
            self._later(t)
            return []
        self._ok()
        if r is not None:
            self.adopted += 1
            t.uuid = str(r.get("uuid", ""))
            log.warning("unknown order %s found at the exchange (%s): adopted", o.identifier, r.get("state"))
            if t.cancel_requested and r.get("state") == "wait":    # a cancel or KILL came while it was unknown
                try:
                    self.client.cancel(uuid=t.uuid)
                    r = self.client.order(uuid=t.uuid) or r
                except (ExchangeRejected, ExchangeUnreachable) as e:
                    log.error("cancel of adopted order %s: %s", o.identifier, e)
            return self._events(t, r, at_ms, reason)
        age_s = (self.wall_ns() - t.unknown_since_ns) / 1e9
        if age_s >= self.cfg.unknown_grace_s and t.lookups >= 1:   # not found twice, the grace period apart
            self.not_found += 1
            del self.tracked[o.identifier]
            return [BrokerEvent("rejected", o.identifier, at_ms,
                                reason=f"not at the exchange {age_s:.0f} s after it was sent: never placed "
                                       f"(identifier burnt, not re-sent)")]
        self._later(t)
        if o.state is OrderState.SUBMITTED:     # after a restart: the request's fate is not known yet
            return [BrokerEvent("unknown", o.identifier, at_ms, reason="looking it up after a restart")]
        return []

    def _events(self, t: Tracked, r: dict, at_ms: int, reason: str = "") -> list[BrokerEvent]:
        """An order as the exchange shows it → the events the engine has not had: accepted, each new fill,
        and its end (filled / cancelled)."""
        o = t.order
        out: list[BrokerEvent] = []
        if o.state in (OrderState.SUBMITTED, OrderState.UNKNOWN) and not t.accepted_sent:
            t.accepted_sent = True
            out.append(BrokerEvent("accepted", o.identifier, at_ms, broker_id=t.uuid))
        fee = self._fee(o.market, o.side)
        booked = 0.0
        for tr in r.get("trades") or ():
            tid = str(tr.get("uuid", ""))
            try:
                price, volume, funds = float(tr["price"]), float(tr["volume"]), float(tr["funds"])
                when = parse_time_ms(tr["created_at"])
            except (KeyError, TypeError, ValueError) as e:
                log.error("order %s: unreadable trade %r (%s)", o.identifier, tr, e)
                continue
            if not tid or tid in t.seen:
                continue
            t.seen.add(tid)
            booked += volume
            out.append(BrokerEvent("fill", o.identifier, when, price, volume, funds * fee, tid))
        state = r.get("state")
        if state in ("done", "cancel") and "trades" in r:
            try:
                executed = float(r.get("executed_volume") or 0.0)
            except (TypeError, ValueError):
                executed = -1.0
            have = o.filled + booked
            if abs(have - executed) > 1e-9 * max(executed, 1e-12) + 1e-12:
                log.error("order %s is %s at the exchange with %s executed, %s read from its trades: kept open "
                          "until they agree", o.identifier, state, r.get("executed_volume"), have)
                return out
            self.tracked.pop(o.identifier, None)
            out.append(BrokerEvent("filled" if state == "done" else "cancelled", o.identifier, at_ms,
                                   reason=reason or ("done" if state == "done" else "cancelled at the exchange")))
        return out

    def reconcile(self, open_orders: list[Order], at_ms: int, known_fills: dict[str, set[str]]) -> list[BrokerEvent]:
        """Restart: what became of each order the ledger has open. ``known_fills``: the trade ids of the
        fills the ledger already holds, per identifier (not reported again)."""
        out: list[BrokerEvent] = []
        for o in open_orders:
            if o.state is OrderState.NEW:
                out.append(BrokerEvent("cancelled", o.identifier, at_ms, reason="never sent (restart)"))
                continue
            # the grace period of an order without an answer runs from this start: whatever the dead process sent
            # could still be travelling when it died
            t = self.tracked[o.identifier] = Tracked(o, uuid=o.broker_id, seen=set(known_fills.get(o.identifier, ())),
                                                     unknown_since_ns=self.wall_ns())
            out += self._read_back(t, at_ms)
        return out

    # -- the account ----------------------------------------------------------------------------------------
    def starting_cash(self, attempts: int = 20, sleep: Callable[[float], None] = time.sleep) -> float | None:
        """The exchange's KRW (free + locked), for a new ledger; None if it cannot be read (asked ``attempts``
        times, 0.5 s apart: at start the replay exchange may not have published its address yet)."""
        for k in range(attempts if self.client.creds is not None else 1):
            try:
                for a in self.client.accounts():
                    if a.get("currency") == "KRW":
                        return float(a["balance"]) + float(a["locked"])
                return 0.0
            except ExchangeUnreachable as e:
                if k == 0 or k == attempts - 1:
                    log.warning("accounts: %s%s", e, " (asking again)" if k == 0 else "")
                sleep(0.5)
            except (ExchangeRejected, KeyError, TypeError, ValueError) as e:
                log.error("accounts: %s", e)
                return None
        return None

    def check_account(self, cash: float, holdings: dict[str, float], prices: dict[str, float],
                      known: Callable[[str], str | None]) -> list[str]:
        """Everything the ledger cannot explain (empty: the account matches). ``holdings``: base units per
        market; ``prices``: KRW per unit (to weigh a coin difference); ``known(identifier)``: the ledger's
        state of that order, or None."""
        self.reconnected = False
        try:
            problems = self._orders_unknown_to(known)
            problems += self._balances_against(cash, holdings, prices)
            problems += self._terms()
        except ExchangeUnreachable as e:
            self._down(e)
            return [f"the exchange is unreachable: {e}"]
        except (ExchangeRejected, KeyError, TypeError, ValueError) as e:
            return [f"the account cannot be read: {e}"]
        self._ok()
        self.reconnected = False
        return problems

    def _orders_unknown_to(self, known: Callable[[str], str | None]) -> list[str]:
        out = []
        for r in self.client.open_orders() + self.client.closed_orders(limit=200):
            ident = r.get("identifier")
            state = known(ident) if ident else None
            what = f"{r.get('state')} order {r.get('uuid')} ({r.get('market')} {r.get('side')}" \
                   f"{', identifier ' + ident if ident else ''})"
            if state is None:
                out.append(f"{what} is not in the ledger")
            elif state == "rejected":     # the exchange never lists an order it refused
                out.append(f"{what} is at the exchange, but the ledger has it rejected (as never placed)")
        return out

    def _balances_against(self, cash: float, holdings: dict[str, float], prices: dict[str, float]) -> list[str]:
        tol = self.cfg.balance_tolerance_krw
        have = {a["currency"]: float(a["balance"]) + float(a["locked"]) for a in self.client.accounts()}
        out = []
        if abs(have.get("KRW", 0.0) - cash) > tol:
            out.append(f"KRW: the exchange holds {have.get('KRW', 0.0):,.2f}, the ledger {cash:,.2f}")
        coins = {m.split("-", 1)[1]: m for m in (*self.markets, *holdings)}
        for cur in sorted(set(coins) | {c for c in have if c != "KRW"}):
            m = coins.get(cur, f"KRW-{cur}")
            ex, led = have.get(cur, 0.0), holdings.get(m, 0.0)
            price = prices.get(m) or 0.0
            if abs(ex - led) * price > tol or (not price and abs(ex - led) > 1e-8):
                out.append(f"{cur}: the exchange holds {decimal(ex)}, the ledger {decimal(led)}")
        return out

    def _terms(self) -> list[str]:
        """Fees and minimums of the markets traded, against the configuration."""
        out = []
        for m in self.markets[:1]:   # one market: the KRW market's terms are the same for all
            c = self.client.chance(m)
            bid, ask = float(c["bid_fee"]), float(c["ask_fee"])
            self.fees[m] = (bid, ask)
            if max(bid, ask) > self.fee_rate + 1e-12:
                out.append(f"the exchange charges {max(bid, ask):.4%} a side; trader.fee_rate is {self.fee_rate:.4%}")
            min_total = float(c["market"]["bid"]["min_total"])
            if self.min_order_krw < min_total:
                out.append(f"the exchange's minimum order is {min_total:,.0f} KRW; trader.min_order_krw is "
                           f"{self.min_order_krw:,.0f}")
        return out
