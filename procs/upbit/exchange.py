"""Upbit's exchange (private) API, the client side (requests + PyJWT): every request signed with a fresh
nonce and the ``query_hash`` of exactly the query sent (:mod:`.auth`), every request through the process's
:class:`~procs.upbit.rest.RateLimiter` (groups ``default``, ``order``, ``order-cancel-all``), and **no
request ever retried by this module** — the caller decides what a failure means (the broker never sends an
order twice). Facts: ``../shared/upbit/PROTOCOL.md`` §2.5–2.9, §3.

What a call raises:

* :class:`ExchangeRejected` — the exchange answered with an Upbit error body (4xx): ``name`` says what
  (``insufficient_funds_bid``, ``invalid_price_ask``, ``order_not_found``, ``nonce_used``, ...). Definitive.
* :class:`ExchangeUnreachable` — no answer, a reset, a timeout, a 5xx, a 429 / 418 or a body that does not
  parse: what happened on the exchange is not known.

The keys are held by the :class:`Credentials` object only; they never appear in a message, a log line or a
``repr``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import requests

from ..runtime.endpoints import EndpointUnavailable
from .auth import authorization, query_string
from .rest import RateLimiter, RestBlocked

log = logging.getLogger("smtm.broker")

ENV_ACCESS, ENV_SECRET = "UPBIT_ACCESS_KEY", "UPBIT_SECRET_KEY"


def decimal(x: float) -> str:
    """A float64 as Upbit's exchange API writes numbers: a decimal string without exponent that reads back to
    the same float (``0.00012345``, ``10000``)."""
    return np.format_float_positional(float(x), trim="-") if x else "0"


def parse_time_ms(s: str) -> int:
    """Upbit's ``created_at`` (ISO-8601 with offset, optional fraction) → Unix ms."""
    return int(round(datetime.fromisoformat(s).timestamp() * 1000))


class ExchangeRejected(Exception):
    """An Upbit error answer (4xx with ``{"error": {"name", "message"}}``): the request did nothing."""

    def __init__(self, status: int, name: str, message: str):
        super().__init__(f"HTTP {status} {name}: {message}")
        self.status, self.name, self.message = status, name, message


class ExchangeUnreachable(Exception):
    """The outcome of the request is unknown (timeout, reset, 5xx, 429 / 418, unreadable answer)."""


@dataclass(frozen=True)
class Credentials:
    """An API key pair (never printed: ``repr`` shows the first 4 characters of the access key)."""
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key[:4]}…)"

    @classmethod
    def from_env(cls, environ=os.environ) -> Credentials | None:
        """From ``UPBIT_ACCESS_KEY`` / ``UPBIT_SECRET_KEY``; None unless both are set."""
        a, s = environ.get(ENV_ACCESS, "").strip(), environ.get(ENV_SECRET, "").strip()
        return cls(a, s) if a and s else None


class ExchangeClient:
    """Signed calls to Upbit's exchange API at ``base_url`` (a string, or a function giving it: the replay
    exchange publishes its address at run time)."""

    def __init__(self, base_url: str | Callable[[], str], creds: Credentials | None, limiter: RateLimiter | None = None,
                 *, connect_timeout_s: float = 2.0, timeout_s: float = 3.0):
        fixed = base_url.rstrip("/") if isinstance(base_url, str) else ""
        self._base = base_url if callable(base_url) else (lambda: fixed)
        self.creds = creds
        self.limiter = limiter or RateLimiter()
        self.timeouts = (connect_timeout_s, timeout_s)
        self.session = requests.Session()
        self.requests = 0
        self.last_rtt_us = 0.0      #: the last answered request's round trip (after the limiter's wait)

    def call(self, method: str, path: str, params: dict | None = None, group: str = "default"):
        """One signed request; the JSON answer. Raises ExchangeRejected or ExchangeUnreachable (also when no
        keys were given)."""
        if self.creds is None:
            raise ExchangeUnreachable(f"no API keys: set {ENV_ACCESS} and {ENV_SECRET} in the trader's environment")
        qs = query_string(params)
        headers = authorization(self.creds.access_key, self.creds.secret_key, qs)
        try:
            url = self._base() + path
            self.limiter.acquire(group, path)
            t0 = time.perf_counter_ns()     # the round trip, without the rate limiter's wait
            if method == "POST":
                # the body's fields in the order hashed; json.dumps keeps the dict's order
                headers["Content-Type"] = "application/json; charset=utf-8"
                r = self.session.post(url, data=json.dumps(params or {}), headers=headers, timeout=self.timeouts)
            else:
                r = self.session.request(method, url + (f"?{qs}" if qs else ""), headers=headers,
                                         timeout=self.timeouts)
        except RestBlocked as e:
            raise ExchangeUnreachable(f"{method} {path}: {e}") from None
        except (requests.RequestException, EndpointUnavailable) as e:
            raise ExchangeUnreachable(f"{method} {path}: {type(e).__name__}: {str(e)[:160]}") from None
        finally:
            self.requests += 1
        self.last_rtt_us = (time.perf_counter_ns() - t0) / 1000
        self.limiter.on_response(group, r.status_code, r.headers, r.text if r.status_code >= 400 else "")
        try:
            body = r.json()
        except ValueError:
            raise ExchangeUnreachable(f"{method} {path}: HTTP {r.status_code}, body not JSON") from None
        if r.status_code >= 500 or r.status_code in (418, 429) or r.status_code < 200:
            raise ExchangeUnreachable(f"{method} {path}: HTTP {r.status_code} {_name(body)}")
        if r.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if not isinstance(err, dict):
                raise ExchangeUnreachable(f"{method} {path}: HTTP {r.status_code} without an Upbit error body")
            raise ExchangeRejected(r.status_code, str(err.get("name")), str(err.get("message", ""))[:200])
        return body

    # -- the endpoints --------------------------------------------------------------------------------------
    def accounts(self) -> list[dict]:
        return self.call("GET", "/v1/accounts")

    def chance(self, market: str) -> dict:
        return self.call("GET", "/v1/orders/chance", {"market": market})

    def place(self, body: dict) -> dict:
        """``POST /v1/orders`` (group ``order``), sent once: never retried here."""
        return self.call("POST", "/v1/orders", body, group="order")

    def order(self, *, uuid: str = "", identifier: str = "") -> dict | None:
        """``GET /v1/order`` by uuid or identifier, with its trades; None if the exchange does not know it."""
        try:
            return self.call("GET", "/v1/order", {"uuid": uuid} if uuid else {"identifier": identifier})
        except ExchangeRejected as e:
            if e.name == "order_not_found" or e.status == 404:
                return None
            raise

    def cancel(self, *, uuid: str = "", identifier: str = "") -> dict:
        return self.call("DELETE", "/v1/order", {"uuid": uuid} if uuid else {"identifier": identifier})

    def open_orders(self, market: str | None = None, max_pages: int = 50) -> list[dict]:
        """Every open order (pages of 100)."""
        out: list[dict] = []
        for page in range(1, max_pages + 1):
            params = {"market": market} if market else {}
            rows = self.call("GET", "/v1/orders/open", {**params, "page": page, "limit": 100})
            out += rows
            if len(rows) < 100:
                break
        return out

    def closed_orders(self, limit: int = 1000) -> list[dict]:
        """Done and cancelled orders of the last 7 days, newest first (at most ``limit``)."""
        return self.call("GET", "/v1/orders/closed", {"limit": limit})

    def cancel_open(self, pairs: list[str] | None = None, count: int = 300) -> dict:
        """``DELETE /v1/orders/open`` (group ``order-cancel-all``, 1 per 2 s): up to ``count`` (Upbit: 20 by
        default, 300 at most) open orders, of ``pairs`` if given."""
        params: dict = {"pairs": ",".join(pairs)} if pairs else {}
        return self.call("DELETE", "/v1/orders/open", {**params, "count": count}, group="order-cancel-all")


def _name(body) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("name")) if isinstance(err, dict) else ""
