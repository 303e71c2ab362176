"""The replay exchange's account and its orders: Upbit's exchange (private) API semantics on the replayed
trades (``../shared/upbit/PROTOCOL.md`` §2.5–2.9, §3.4, §4). No I/O: :mod:`.private` serves it over HTTP.

* **Balances** per currency (``KRW`` and each coin): ``balance`` (free), ``locked`` (reserved by open
  orders), ``avg_buy_price`` (KRW, fees excluded), seeded from ``exchange.account_krw``.
* **Orders** (``POST /v1/orders``): ``limit`` (``price`` per unit + ``volume``), ``price`` (market buy of a
  KRW total), ``market`` (market sell of a volume), ``best`` (requires ``time_in_force`` ``ioc`` | ``fok``;
  buy by KRW total, sell by volume); ``time_in_force`` ``ioc`` / ``fok`` on ``limit`` and ``best``,
  ``post_only`` on ``limit``. ``identifier`` is unique for the account **forever**, burnt even when the order
  fails validation. Refusals carry Upbit's names: ``validation_error``, ``invalid_price_bid`` /
  ``invalid_price_ask`` (off the tick grid, :func:`procs.trading.risk.on_tick`), ``under_min_total_bid`` /
  ``under_min_total_ask`` (5,000 KRW), ``insufficient_funds_bid`` / ``insufficient_funds_ask``.
* **Matching**: every replayed trade is offered to the open orders of its market, oldest first, with the
  paper broker's :class:`~procs.trading.fills.FillModel` (one module, so the Upbit broker against this
  exchange and the paper broker book the same fills); an order fills only on trades printed after it was
  placed. ``ioc`` keeps what the next trade of its market gives and cancels the rest; ``fok`` fills
  completely on that trade or is cancelled; a ``post_only`` limit that would take (a buy at or above the
  last price, a sell at or below it) is cancelled at once. There is no order book in the data, so
  "immediately" means "on the next trade".
* Every fill is a trade of the order with its own ``uuid`` (``trades`` in ``GET /v1/order``); fees
  (``fee_rate``, Upbit KRW 0.05 %) are reserved at placement (``reserved_fee``) and paid per fill.

Times are the replay clock (Unix ms UTC), written as Upbit does (KST ISO-8601 with milliseconds). Amounts
go out as decimal strings (Upbit's exchange API numbers are strings) that read back to the same float64.
"""
from __future__ import annotations

import math
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from ..trading.fills import FillModel, filled_up
from ..trading.risk import on_tick
from ..upbit.exchange import decimal as num
from .protocol import KST

MIN_TOTAL_KRW = 5000.0
MAX_TOTAL_KRW = 1_000_000_000.0
ORD_TYPES = ("limit", "price", "market", "best")
#: Upbit's order states: wait (open), done (filled), cancel (cancelled, possibly partly filled)
OPEN_STATES = ("wait", "watch")


class ExchangeError(Exception):
    """An exchange API error: Upbit's ``{"error": {"name", "message"}}`` body with an HTTP status."""

    def __init__(self, status: int, name: str, message: str, retry_after: int | None = None):
        super().__init__(f"{name}: {message}")
        self.status, self.name, self.message, self.retry_after = status, name, message, retry_after

    def body(self) -> dict:
        return {"error": {"name": self.name, "message": self.message}}


def kst_iso(ms: int) -> str:
    """Unix ms UTC → ``2024-10-23T17:30:00.123+09:00``."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(KST).isoformat(timespec="milliseconds")


@dataclass
class Balance:
    balance: float = 0.0
    locked: float = 0.0
    avg_buy_price: float = 0.0


@dataclass
class ExchangeOrder:
    uuid: str
    identifier: str | None
    market: str
    side: str                     #: bid | ask
    ord_type: str                 #: limit | price | market | best
    price: float | None           #: unit price (limit), KRW total (price, best bid); None otherwise
    volume: float | None          #: base units (limit, market, best ask); None for a KRW-total buy
    time_in_force: str | None
    created_ms: int
    seq: int                      #: placement order (matching priority)
    state: str = "wait"
    executed_volume: float = 0.0
    executed_funds: float = 0.0
    locked: float = 0.0           #: KRW (bid, incl. the fee reserve) or base units (ask) still reserved
    reserved_fee: float = 0.0
    paid_fee: float = 0.0
    trades: list[dict] = field(default_factory=list)
    offered: int = 0              #: trades offered so far (ioc / fok decide on the first)
    partial: float | None = None  #: fault: the first fill is half of what the trade gives, then no fill ...
    stalled_until: float = 0.0    #: ... until this wall time (monotonic s; inf: ``partial`` was 0, until cancelled)

    @property
    def fill_type(self) -> str:
        """How the paper fill model fills it: ``limit``, ``price`` (a buy by KRW total) or ``market``."""
        return "limit" if self.ord_type == "limit" else ("price" if self.by_total else "market")

    @property
    def by_total(self) -> bool:
        """A buy of a KRW total (``price``, or ``best`` bid)."""
        return self.side == "bid" and self.ord_type in ("price", "best")

    @property
    def remaining(self) -> float:
        """KRW left for a buy by total, base units otherwise (as the paper broker counts)."""
        if self.by_total:
            return max(self.price - self.executed_funds, 0.0)
        return max(self.volume - self.executed_volume, 0.0)

    def done(self, funds: float = 0.0, volume: float = 0.0) -> bool:
        """Filled — with ``funds`` / ``volume`` more, if given — by the paper broker's rule
        (:func:`~procs.trading.fills.filled_up`)."""
        if self.by_total:
            return filled_up(self.price, self.executed_funds + funds)
        return filled_up(self.volume, self.executed_volume + volume)


class ReplayAccount:
    """One account (the replay has one, with one or more API keys). Single-threaded (the asyncio loop)."""

    def __init__(self, markets: list[str], krw: float, model: FillModel, clock_ms, wall=time.monotonic):
        self.markets = set(markets)
        self.model = model
        self.clock_ms = clock_ms                    #: () -> replay time (Unix ms UTC)
        self.wall = wall
        self.balances: dict[str, Balance] = {"KRW": Balance(krw)}
        self.orders: dict[str, ExchangeOrder] = {}  # every order by uuid (kept forever: a replay is bounded)
        self.by_identifier: dict[str, str] = {}     # identifier -> uuid
        self.burnt: set[str] = set()                # every identifier ever presented, placed or not
        self.open: dict[str, list[ExchangeOrder]] = {}   # market -> open orders, placement order
        self.last_price: dict[str, float] = {}
        self._seq = 0
        self.fills = 0
        self.faults = None      #: a :class:`~procs.replay.faults.FaultInjector` (order_partial, fill_duplicate)

    # -- queries ----------------------------------------------------------------------------------------
    def bal(self, currency: str) -> Balance:
        return self.balances.setdefault(currency, Balance())

    def accounts(self) -> list[dict]:
        """``GET /v1/accounts``: every currency with a balance (KRW always)."""
        return [self._account(cur) for cur, b in sorted(self.balances.items(), key=lambda kv: (kv[0] != "KRW", kv[0]))
                if cur == "KRW" or b.balance or b.locked]

    def _account(self, currency: str) -> dict:
        """One currency as ``/v1/accounts`` lists it (numbers as strings)."""
        b = self.bal(currency)
        return {"currency": currency, "balance": num(b.balance), "locked": num(b.locked),
                "avg_buy_price": num(b.avg_buy_price), "avg_buy_price_modified": False, "unit_currency": "KRW"}

    def chance(self, market: str) -> dict:
        """``GET /v1/orders/chance``: fees, the market's order types and minimums, both sides' accounts."""
        self._market(market)
        quote, base = market.split("-", 1)
        fee = num(self.model.fee_rate)
        return {"bid_fee": fee, "ask_fee": fee, "maker_bid_fee": fee, "maker_ask_fee": fee,
                "market": {"id": market, "name": f"{base}/{quote}", "order_types": ["limit"],
                           "order_sides": ["ask", "bid"], "bid_types": ["limit", "price", "best_fok", "best_ioc"],
                           "ask_types": ["limit", "market", "best_fok", "best_ioc"],
                           "bid": {"currency": quote, "min_total": num(MIN_TOTAL_KRW)},
                           "ask": {"currency": quote, "min_total": num(MIN_TOTAL_KRW)},
                           "max_total": num(MAX_TOTAL_KRW), "state": "active"},
                "bid_account": self._account(quote), "ask_account": self._account(base)}

    def find(self, uuid: str | None, identifier: str | None) -> ExchangeOrder:
        """Exactly one of ``uuid`` / ``identifier``; raises ExchangeError 404 ``order_not_found``."""
        if bool(uuid) == bool(identifier):
            raise ExchangeError(400, "validation_error", "give exactly one of uuid and identifier")
        key = uuid if uuid else self.by_identifier.get(identifier or "")
        o = self.orders.get(key or "")
        if o is None:
            raise ExchangeError(404, "order_not_found", "주문을 찾지 못했습니다.")
        return o

    def view(self, o: ExchangeOrder, with_trades: bool = False) -> dict:
        """An order as Upbit writes it (numbers as strings)."""
        out = {"uuid": o.uuid, "side": o.side, "ord_type": o.ord_type,
               "price": None if o.price is None else num(o.price), "state": o.state, "market": o.market,
               "created_at": kst_iso(o.created_ms), "volume": None if o.volume is None else num(o.volume),
               "remaining_volume": None if o.volume is None else num(max(o.volume - o.executed_volume, 0.0)),
               "reserved_fee": num(o.reserved_fee), "remaining_fee": num(max(o.reserved_fee - o.paid_fee, 0.0)),
               "paid_fee": num(o.paid_fee), "locked": num(o.locked), "executed_volume": num(o.executed_volume),
               "executed_funds": num(o.executed_funds), "trades_count": len({t["uuid"] for t in o.trades})}
        if o.time_in_force:
            out["time_in_force"] = o.time_in_force
        if o.identifier is not None:
            out["identifier"] = o.identifier
        if with_trades:
            out["trades"] = list(o.trades)
        return out

    def open_orders(self, market: str | None = None, states: tuple[str, ...] = OPEN_STATES) -> list[ExchangeOrder]:
        return sorted((o for m, os_ in self.open.items() if market in (None, m) for o in os_ if o.state in states),
                      key=lambda o: o.seq, reverse=True)

    def closed_orders(self, market: str | None, states: tuple[str, ...], start_ms: int, end_ms: int,
                      limit: int) -> list[ExchangeOrder]:
        out = [o for o in self.orders.values() if o.state in states and (market is None or o.market == market)
               and start_ms <= o.created_ms <= end_ms]
        return sorted(out, key=lambda o: o.seq, reverse=True)[:limit]

    # -- placing and cancelling --------------------------------------------------------------------------
    def _market(self, market) -> str:
        if not isinstance(market, str) or market not in self.markets:
            raise ExchangeError(400, "validation_error", f"market {market!r} is not traded here")
        return market

    @staticmethod
    def _amount(body: dict, key: str, required: bool) -> float | None:
        v = body.get(key)
        if v is None or v == "":
            if required:
                raise ExchangeError(400, "validation_error", f"{key} is required")
            return None
        if not required:
            raise ExchangeError(400, "validation_error", f"{key} must not be given for this ord_type")
        try:
            x = float(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else float("nan")
        except ValueError:
            x = float("nan")
        if not (x > 0 and np.isfinite(x)):
            raise ExchangeError(400, "validation_error", f"{key} must be a positive decimal number, got {v!r}")
        return x

    def place(self, body: dict) -> ExchangeOrder:
        """``POST /v1/orders``; raises ExchangeError (the identifier is burnt even then)."""
        ident = body.get("identifier")
        if ident is not None:
            if not isinstance(ident, str) or not 1 <= len(ident) <= 64:
                raise ExchangeError(400, "validation_error", "identifier must be a string of 1 to 64 characters")
            if ident in self.burnt:
                raise ExchangeError(400, "validation_error", f"identifier {ident!r} was used before "
                                                             f"(an identifier is unique forever)")
            self.burnt.add(ident)
        market = self._market(body.get("market"))
        side, ord_type, tif = body.get("side"), body.get("ord_type"), body.get("time_in_force")
        if side not in ("bid", "ask"):
            raise ExchangeError(400, "validation_error", "side must be bid or ask")
        if ord_type not in ORD_TYPES:
            raise ExchangeError(400, "validation_error", f"ord_type must be one of {', '.join(ORD_TYPES)}")
        if tif not in (None, "ioc", "fok", "post_only") or (tif == "post_only" and ord_type != "limit") \
                or (tif in ("ioc", "fok") and ord_type not in ("limit", "best")) or (ord_type == "best" and not tif):
            raise ExchangeError(400, "validation_error", f"time_in_force {tif!r} does not go with ord_type {ord_type}")
        by_total = side == "bid" and ord_type in ("price", "best")
        price = self._amount(body, "price", ord_type == "limit" or by_total)
        volume = self._amount(body, "volume", ord_type == "limit" or (side == "ask" and ord_type != "limit"))
        if ord_type == "limit" and not on_tick(price):
            raise ExchangeError(400, f"invalid_price_{side}", f"price {num(price)} is not on the tick grid")
        last = self.last_price.get(market)
        total = price if by_total else (price * volume if ord_type == "limit" else volume * (last or 0.0))
        if total < MIN_TOTAL_KRW:
            raise ExchangeError(400, f"under_min_total_{side}", f"the order total {total:,.2f} KRW is under the "
                                                                f"minimum {MIN_TOTAL_KRW:,.0f} KRW")
        if total > MAX_TOTAL_KRW:
            raise ExchangeError(400, f"create_{side}_error", f"the order total {total:,.0f} KRW is over the "
                                                             f"maximum {MAX_TOTAL_KRW:,.0f} KRW")
        return self._reserve_and_add(ident, market, side, ord_type, price, volume, tif, by_total, last)

    def _reserve_and_add(self, ident, market, side, ord_type, price, volume, tif, by_total, last) -> ExchangeOrder:
        fee_rate = self.model.fee_rate
        base = market.split("-", 1)[1]
        if side == "bid":
            krw = price if by_total else price * volume
            need = krw + krw * fee_rate
            b = self.bal("KRW")
            if need > b.balance + 1e-9:
                raise ExchangeError(400, "insufficient_funds_bid", f"{need:,.2f} KRW needed, "
                                                                   f"{b.balance:,.2f} available")
            b.balance -= need
            b.locked += need
            locked, reserved_fee = need, krw * fee_rate
        else:
            b = self.bal(base)
            if volume > b.balance * (1 + 1e-12):
                raise ExchangeError(400, "insufficient_funds_ask", f"{num(volume)} {base} needed, "
                                                                   f"{num(b.balance)} available")
            b.balance -= volume
            b.locked += volume
            locked, reserved_fee = volume, 0.0
        self._seq += 1
        o = ExchangeOrder(str(uuidlib.uuid4()), ident, market, side, ord_type, price, volume, tif, self.clock_ms(),
                          self._seq, locked=locked, reserved_fee=reserved_fee)
        if self.faults is not None:
            o.partial = self.faults.take_order("order_partial")
        self.orders[o.uuid] = o
        if ident is not None:
            self.by_identifier[ident] = o.uuid
        self.open.setdefault(market, []).append(o)
        if tif == "post_only" and last is not None and (price >= last if side == "bid" else price <= last):
            self._close(o, "cancel")    # it would have taken liquidity
        return o

    def cancel(self, o: ExchangeOrder) -> dict:
        """``DELETE /v1/order``: the order as of the request (Upbit answers before the cancel completes;
        here it completes at once, so the next ``GET`` shows ``cancel``)."""
        if o.state not in OPEN_STATES:
            raise ExchangeError(400, "order_not_found" if o.state == "done" else "validation_error",
                                f"order {o.uuid} is already {o.state}")
        before = self.view(o)
        self._close(o, "cancel")
        return before

    def cancel_open(self, pairs: set[str] | None, side: str | None, count: int) -> tuple[list[dict], list[dict]]:
        """``DELETE /v1/orders/open``: (cancelled, failed) summaries of up to ``count`` open orders."""
        done = []
        for o in self.open_orders():
            if len(done) >= count:
                break
            if (pairs and o.market not in pairs) or (side and o.side != side):
                continue
            self._close(o, "cancel")
            done.append({"uuid": o.uuid, "market": o.market, "identifier": o.identifier})
        return done, []

    def _close(self, o: ExchangeOrder, state: str) -> None:
        """The order leaves the book: what it still reserves goes back to the free balance."""
        o.state = state
        cur = "KRW" if o.side == "bid" else o.market.split("-", 1)[1]
        b = self.bal(cur)
        b.balance += o.locked
        b.locked -= o.locked
        if abs(b.locked) < 1e-9:
            b.locked = 0.0
        o.locked = 0.0
        book = self.open.get(o.market, [])
        if o in book:
            book.remove(o)

    # -- matching -----------------------------------------------------------------------------------------
    def on_trade(self, market: str, ts: int, price: float, volume: float, seq_id: int) -> int:
        """Offer one replayed trade to the market's open orders; returns the fills made."""
        self.last_price[market] = price
        book = self.open.get(market)
        if not book:
            return 0
        made = 0
        for o in list(book):
            o.offered += 1
            if o.stalled_until and self.wall() < o.stalled_until:
                continue
            f = self.model.match(o.side, o.fill_type, o.price or 0.0, o.remaining, price, volume)
            if o.time_in_force == "fok" and (f is None or not o.done(f.price * f.volume, f.volume)):
                self._close(o, "cancel")
                continue
            if f is not None:
                partial = o.partial is not None and not o.trades
                vol = f.volume / 2 if partial else f.volume
                self._fill(o, ts, f.price, vol, f.price * vol * self.model.fee_rate if partial else f.fee, seq_id)
                made += 1
                if partial:
                    o.stalled_until = self.wall() + o.partial if o.partial else math.inf
            if o.state in OPEN_STATES and o.done():
                self._close(o, "done")
            elif o.state in OPEN_STATES and o.time_in_force == "ioc":
                self._close(o, "cancel")
        return made

    def _fill(self, o: ExchangeOrder, ts: int, price: float, volume: float, fee: float, seq_id: int) -> None:
        funds = price * volume
        base = o.market.split("-", 1)[1]
        if o.side == "bid":
            o.locked -= funds + fee
            coin = self.bal(base)
            held = coin.balance + coin.locked
            coin.avg_buy_price = (coin.avg_buy_price * held + funds) / (held + volume)
            coin.balance += volume
            self.bal("KRW").locked -= funds + fee
        else:
            o.locked -= volume
            self.bal(base).locked -= volume
            self.bal("KRW").balance += funds - fee
        o.executed_volume += volume
        o.executed_funds += funds
        o.paid_fee += fee
        self.fills += 1
        trade = {"market": o.market, "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{o.uuid}/{seq_id}")),
                 "price": num(price), "volume": num(volume), "funds": num(funds),
                 "trend": "up" if o.side == "bid" else "down", "created_at": kst_iso(ts), "side": o.side}
        o.trades.append(trade)
        if self.faults is not None and self.faults.take_order("fill_duplicate") is not None:
            o.trades.append(dict(trade))    # the same trade listed twice: clients must de-duplicate by uuid
