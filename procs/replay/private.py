"""The replay exchange's exchange (private) API, as Upbit serves it (``../shared/upbit/PROTOCOL.md`` §2.5–2.9,
§3): every request signed (:func:`procs.upbit.auth.verify`: HS512 JWT, ``access_key``, a nonce never accepted
twice, ``query_hash`` of the exact query string), per-account rate-limit groups with ``Remaining-Req``
(``default`` 30/s, ``order`` 8/s, ``order-cancel-all`` 1 per 2 s; 429 over them), Upbit's error bodies.

==========================  ==========  ====================================================
``GET /v1/accounts``        default     balances (view)
``GET /v1/orders/chance``   default     fees, minimums, the market's order types (view)
``POST /v1/orders``         order       place an order (JSON body; order faults apply here)
``GET /v1/order``           default     one order by ``uuid`` or ``identifier``, with its trades
``GET /v1/orders/open``     default     open orders (``market``, ``state(s)``, ``page``, ``limit`` ≤ 100)
``GET /v1/orders/closed``   default     done / cancelled orders (``market``, ``state(s)``, ``start_time`` /
                                        ``end_time`` window ≤ 7 days of replay time, ``limit`` ≤ 1000)
``DELETE /v1/order``        default     cancel one order (``uuid`` or ``identifier``)
``DELETE /v1/orders/open``  order-      cancel open orders (``pairs``, ``cancel_side``, ``count`` ≤ 300): the
                            cancel-all  kill switch's batch cancel
==========================  ==========  ====================================================

Keys exist only for the replay (``exchange.access_key`` / ``exchange.secret_key``, scope ``order``; a
second, view-only key answers ``out_of_scope`` to anything that places or cancels). ``GET /replay/orders``
(admin, unsigned, loopback) lists every order ever placed and the balances, for the crash campaign's
comparison with the trader's ledger.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from ..upbit.auth import AuthError, NonceLedger, query_string, verify
from .accounts import KST, ExchangeError, ReplayAccount
from .faults import FaultInjector, RestLimits, limit_answer

log = logging.getLogger("smtm.exchange")

#: What each key may do: ``view`` (accounts, orders) and ``order`` (place, cancel).
SCOPES = ("view", "order")
WEEK_MS = 7 * 86_400_000


class PrivateApi:
    """Handlers of the exchange API over one :class:`~procs.replay.accounts.ReplayAccount`."""

    def __init__(self, account: ReplayAccount, keys: dict[str, tuple[str, tuple[str, ...]]], faults: FaultInjector,
                 limits: RestLimits | None = None):
        self.account = account
        self.keys = keys                   # access key -> (secret key, scopes)
        self.faults = faults
        self.limits = limits or RestLimits()
        self.nonces = NonceLedger()
        self.requests = 0
        self.placed = 0
        self.status_counts: dict[int, int] = {}
        account.faults = faults

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/accounts", self.accounts)
        app.router.add_get("/v1/orders/chance", self.chance)
        app.router.add_post("/v1/orders", self.place)
        app.router.add_get("/v1/order", self.get_order)
        app.router.add_delete("/v1/order", self.cancel)
        app.router.add_get("/v1/orders/open", self.open_orders)
        app.router.add_delete("/v1/orders/open", self.cancel_open)
        app.router.add_get("/v1/orders/closed", self.closed_orders)
        app.router.add_get("/replay/orders", self.dump)

    # -- plumbing ----------------------------------------------------------------------------------------
    def _answer(self, status: int, body, rem: str, retry_after: int | None = None) -> web.Response:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        headers = {"Remaining-Req": rem} if rem else {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.json_response(body, status=status, headers=headers or None)

    async def _admit(self, request: web.Request, group: str, scope: str, body: dict | None = None
                     ) -> tuple[dict, str]:
        """Authenticate and rate-limit one request: ``(params, Remaining-Req)``; raises ExchangeError."""
        self.requests += 1
        if body is None:
            params = dict(parse_qsl(request.query_string, keep_blank_values=True))
            qs = unquote(request.query_string)
        else:
            params, qs = body, query_string(body)
        try:
            access = verify(request.headers.get("Authorization"), qs,
                            lambda k: self.keys[k][0] if k in self.keys else None, self.nonces)
        except AuthError as e:
            raise ExchangeError(e.status, e.name, e.message) from None
        if scope not in self.keys[access][1]:
            raise ExchangeError(403, "out_of_scope", f"this key may not {scope}")
        status, left, blocked_s = self.limits.check(group)
        rem, err, retry_after = limit_answer(group, status, left, blocked_s)
        if err is not None:
            raise ExchangeError(*err, retry_after=retry_after)
        return params, rem

    async def _handle(self, request: web.Request, group: str, scope: str, work, json_body: bool = False
                      ) -> web.Response:
        rem = ""
        try:
            body = None
            if json_body:
                try:
                    body = json.loads(await request.text() or "{}")
                except json.JSONDecodeError:
                    raise ExchangeError(400, "validation_error", "the body is not JSON") from None
                if not isinstance(body, dict):
                    raise ExchangeError(400, "validation_error", "the body must be a JSON object")
            params, rem = await self._admit(request, group, scope, body)
            status, out = await work(request, params)
            return self._answer(status, out, rem)
        except ExchangeError as e:
            return self._answer(e.status, e.body(), rem, e.retry_after)

    # -- routes ------------------------------------------------------------------------------------------
    async def accounts(self, request: web.Request) -> web.Response:
        async def work(request, params):
            return 200, self.account.accounts()
        return await self._handle(request, "default", "view", work)

    async def chance(self, request: web.Request) -> web.Response:
        async def work(request, params):
            return 200, self.account.chance(params.get("market"))
        return await self._handle(request, "default", "view", work)

    async def get_order(self, request: web.Request) -> web.Response:
        async def work(request, params):
            o = self.account.find(params.get("uuid"), params.get("identifier"))
            return 200, self.account.view(o, with_trades=True)
        return await self._handle(request, "default", "view", work)

    async def cancel(self, request: web.Request) -> web.Response:
        async def work(request, params):
            return 200, self.account.cancel(self.account.find(params.get("uuid"), params.get("identifier")))
        return await self._handle(request, "default", "order", work)

    async def open_orders(self, request: web.Request) -> web.Response:
        async def work(request, params):
            page, limit = _int(params, "page", 1, 1, 10**6), _int(params, "limit", 100, 1, 100)
            states = _states(request, ("wait", "watch"), ("wait", "watch"))
            rows = self.account.open_orders(params.get("market"), states)
            return 200, [self.account.view(o) for o in rows[(page - 1) * limit:page * limit]]
        return await self._handle(request, "default", "view", work)

    async def closed_orders(self, request: web.Request) -> web.Response:
        async def work(request, params):
            limit = _int(params, "limit", 100, 1, 1000)
            states = _states(request, ("done", "cancel"), ("done", "cancel"))
            end = _time(params.get("end_time"), self.account.clock_ms())
            start = _time(params.get("start_time"), end - WEEK_MS)
            if not 0 <= end - start <= WEEK_MS:
                raise ExchangeError(400, "validation_error", "start_time .. end_time must be within 7 days")
            rows = self.account.closed_orders(params.get("market"), states, start, end, limit)
            return 200, [self.account.view(o) for o in rows]
        return await self._handle(request, "default", "view", work)

    async def cancel_open(self, request: web.Request) -> web.Response:
        async def work(request, params):
            pairs = {p for p in (params.get("pairs") or "").split(",") if p} or None
            side = params.get("cancel_side")
            if side not in (None, "all", "bid", "ask"):
                raise ExchangeError(400, "validation_error", "cancel_side must be all, bid or ask")
            done, failed = self.account.cancel_open(pairs, None if side in (None, "all") else side,
                                                    _int(params, "count", 300, 1, 300))
            return 200, {"success": {"count": len(done), "orders": done}, "failed": {"count": len(failed),
                                                                                      "orders": failed}}
        return await self._handle(request, "order-cancel-all", "order", work)

    async def place(self, request: web.Request) -> web.Response:
        return await self._handle(request, "order", "order", self._place, json_body=True)

    async def _place(self, request: web.Request, body: dict) -> tuple[int, dict]:
        """``POST /v1/orders`` with the order faults: refused before placing (429, reject), held before
        placing (a client gone meanwhile never gets it placed), or answered wrongly after placing."""
        f = self.faults
        if f.take_order("order_429") is not None:
            raise ExchangeError(429, "too_many_requests", "Too many API requests. (injected)")
        if f.take_order("order_reject") is not None:
            side = body.get("side") if body.get("side") in ("bid", "ask") else "bid"
            raise ExchangeError(400, f"create_{side}_error", "the order was refused (injected)")
        hold = f.take_order("order_hold")
        if hold is not None:
            await self._inside(request, "held", hold)
            if request.transport is None or request.transport.is_closing():
                log.warning("order request held, client gone: not placed (%s)", body.get("identifier"))
                raise ExchangeError(499, "client_closed", "the client left before the order was placed")
        o = self.account.place(body)
        self.placed += 1
        view = self.account.view(o)
        if f.take_order("order_drop") is not None:
            log.warning("order %s placed, connection dropped (injected)", o.identifier)
            if request.transport is not None:
                request.transport.abort()
            raise ExchangeError(599, "dropped", "connection dropped (injected)")
        if f.take_order("order_500") is not None:
            raise ExchangeError(500, "server_error", "internal error after placing (injected)")
        slow = f.take_order("order_slow")
        if slow is not None:
            await self._inside(request, "answering", slow)
        return 201, view

    async def _inside(self, request: web.Request, what: str, seconds: float) -> None:
        """Wait ``seconds`` (counted in ``orders_in_flight``), ending early when the client has gone."""
        self.faults.in_flight[what] += 1
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end and request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.02)
        finally:
            self.faults.in_flight[what] -= 1

    async def dump(self, request: web.Request) -> web.Response:
        """Admin: every order ever placed (with trades) and the balances."""
        a = self.account
        return web.json_response({"orders": [a.view(o, with_trades=True) for o in sorted(a.orders.values(),
                                                                                       key=lambda o: o.seq)],
                                  "accounts": a.accounts(), "burnt_identifiers": len(a.burnt),
                                  "placed": self.placed, "fills": a.fills,
                                  "status_counts": {str(k): v for k, v in self.status_counts.items()}})


def _int(params: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = params.get(key)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise ExchangeError(400, "validation_error", f"{key} must be an integer") from None
    if not lo <= n <= hi:
        raise ExchangeError(400, "validation_error", f"{key} must be between {lo} and {hi}")
    return n


def _states(request: web.Request, default: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    q = request.query
    got = tuple(q.getall("states[]", ())) or tuple(q.getall("states", ())) or ((q["state"],) if "state" in q else ())
    bad = [s for s in got if s not in allowed]
    if bad:
        raise ExchangeError(400, "validation_error", f"state {bad[0]!r}: allowed are {', '.join(allowed)}")
    return got or default


def _time(v: str | None, default: int) -> int:
    """ISO-8601 (naive = KST, as Upbit's order times) or Unix ms → Unix ms."""
    if v is None:
        return default
    if v.isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace(" ", "T"))
    except ValueError:
        raise ExchangeError(400, "validation_error", f"time {v!r} is not ISO-8601") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=KST)).timestamp() * 1000)
