"""Upbit REST through one rate limiter per process (requests for the HTTP).

:class:`RateLimiter` is shared by every REST caller of a process. Per Upbit group
(``candle``, ``ticker``, ``market``, ``order``, ...) it keeps

* a local sliding-window budget (the documented per-second limit) so a burst never goes
  out faster than allowed, even before the first response;
* the server's word: ``Remaining-Req: group=candle; min=..; sec=N`` — when ``sec`` reaches 0
  the group waits until one second after that response;
* on **429**: the group backs off (0.5 s, doubling up to 2 s: the budget is per second, so
  a pause of that order is enough and keeps the client clear of a 418) and the request is
  retried (bounded); a clear warning is logged;
* on **418**: Upbit has blocked the client. Every REST call of the process stops for the
  time the answer names (``Retry-After``, else a number of seconds in the message, else
  60 s): calls raise :class:`RestBlocked` at once instead of digging the hole deeper.
  One error line is logged.

Time and sleeping go through injectable ``clock``/``sleep`` so tests can use fakes.

:meth:`RestClient.candle_history`, :meth:`RestClient.tickers` and :meth:`RestClient.market_all`
are what the market code is handed: parsed results, and :class:`~procs.market.types.FetchError`
for everything worth retrying.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import requests

from ..market.types import FetchError, Ticker
from ..runtime.endpoints import EndpointUnavailable
from .parsing import candle_start, parse_rest_candles, parse_ticker

log = logging.getLogger("smtm.rest")

#: Documented per-second limits (PROTOCOL.md §3.2).
GROUP_LIMITS = {"market": 10, "candle": 10, "trade": 10, "ticker": 10, "orderbook": 10,
                "default": 30, "order": 8, "order-test": 8, "order-cancel-all": 0.5}

_GROUP_OF_PATH = (("/v1/candles", "candle"), ("/v1/market", "market"), ("/v1/ticker", "ticker"),
                  ("/v1/trades", "trade"), ("/v1/orderbook", "orderbook"))
_REMAINING_RE = re.compile(r"group=([\w-]+);.*?sec=(\d+)")


class RestError(RuntimeError):
    """A REST call failed (status and Upbit's error body in the message)."""

    def __init__(self, status: int, body, url: str):
        super().__init__(f"{url}: HTTP {status}: {body}")
        self.status = status
        self.body = body


class RestBlocked(RestError):
    """Upbit answered 418: no REST call until ``until`` (monotonic seconds)."""

    def __init__(self, until: float, url: str, clock=time.monotonic):
        super().__init__(418, f"blocked for another {max(0.0, until - clock()):.1f} s", url)
        self.until = until


def group_of(path: str) -> str:
    for prefix, g in _GROUP_OF_PATH:
        if path.startswith(prefix):
            return g
    return "default"


class RateLimiter:
    """One per process; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 limits: dict[str, float] | None = None):
        self.clock = clock
        self.sleep = sleep
        self.limits = dict(GROUP_LIMITS if limits is None else limits)
        self._lock = threading.Lock()
        self._sent: dict[str, deque] = {}
        self._not_before: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self.blocked_until = 0.0
        self.throttled = 0     # 429 answers seen

    def acquire(self, group: str, url: str = "") -> None:
        """Block until a request of ``group`` may go out. Raises RestBlocked during a 418 block."""
        while True:
            with self._lock:
                now = self.clock()
                if now < self.blocked_until:
                    raise RestBlocked(self.blocked_until, url, self.clock)
                limit = self.limits.get(group, self.limits["default"])
                win = self._sent.setdefault(group, deque())
                while win and now - win[0] >= 1.0:
                    win.popleft()
                wait = max(self._not_before.get(group, 0.0) - now, 0.0)
                if limit >= 1 and len(win) >= limit:
                    wait = max(wait, 1.0 - (now - win[0]))
                elif limit < 1 and win:
                    wait = max(wait, 1.0 / limit - (now - win[-1]))
                if wait <= 0:
                    win.append(now)
                    return
            self.sleep(wait + 0.001)

    def on_response(self, group: str, status: int, headers, body_text: str = "") -> float | None:
        """Learn from a response. Returns a delay to wait before retrying (429), else None."""
        with self._lock:
            now = self.clock()
            m = _REMAINING_RE.search(headers.get("Remaining-Req", "") or "")
            if m:
                group = m.group(1)
                if int(m.group(2)) <= 0:
                    self._not_before[group] = max(self._not_before.get(group, 0.0), now + 1.0)
            if status == 429:
                self.throttled += 1
                delay = min(2.0, self._backoff.get(group, 0.25) * 2)
                self._backoff[group] = delay
                self._not_before[group] = max(self._not_before.get(group, 0.0), now + delay)
                log.warning("REST 429 (group %s): backing off %.1f s", group, delay)
                return delay
            if status == 418:
                secs = _retry_after(headers, body_text)
                self.blocked_until = max(self.blocked_until, now + secs)
                log.error("REST 418: Upbit blocked this client; every REST call stops for %.0f s", secs)
                return None
            if 200 <= status < 300:
                self._backoff.pop(group, None)
            return None


def _retry_after(headers, body_text: str) -> float:
    ra = headers.get("Retry-After")
    if ra:
        try:
            return max(1.0, float(ra))
        except ValueError:
            pass
    m = re.search(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", body_text or "")
    return max(1.0, float(m.group(1))) if m else 60.0

#: What a REST call raises that is worth retrying later (the market code sees it as FetchError):
#: an error answer, no published address yet, the network, or a body that does not parse.
RETRYABLE = (RestError, EndpointUnavailable, requests.RequestException, ValueError, KeyError, TypeError)


class RestClient:
    """GET against ``base_url`` through a shared :class:`RateLimiter` (requests.Session).

    ``base_url`` is a string or a function giving it (asked at each request: the replay
    exchange's address is published at run time, ``procs.runtime.endpoints``)."""

    def __init__(self, base_url: str | Callable[[], str], limiter: RateLimiter, timeout_s: float = 10.0,
                 max_retries: int = 6):
        fixed = base_url.rstrip("/") if isinstance(base_url, str) else ""
        self._base = base_url if callable(base_url) else (lambda: fixed)
        self.limiter = limiter
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.session = requests.Session()
        self.requests = 0

    def get(self, path: str, params: dict | None = None):
        """JSON body of a successful GET. Raises RestBlocked, RestError, EndpointUnavailable or
        requests exceptions."""
        url = self._base() + path
        group = group_of(path)
        for _ in range(self.max_retries + 1):
            self.limiter.acquire(group, url)
            r = self.session.get(url, params=params, timeout=self.timeout_s)
            self.requests += 1
            self.limiter.on_response(group, r.status_code, r.headers, r.text if r.status_code >= 400 else "")
            if r.status_code == 429:
                continue  # the limiter already holds the group back for `delay`
            if r.status_code == 418:
                raise RestBlocked(self.limiter.blocked_until, url, self.limiter.clock)
            if r.status_code >= 400:
                try:
                    body = r.json()
                except ValueError:
                    body = r.text[:200]
                raise RestError(r.status_code, body, url)
            return r.json()
        raise RestError(429, f"still throttled after {self.max_retries} retries", url)

    def candles(self, market: str, unit_min: int, since_s: int, max_pages: int = 50) -> list[dict]:
        """Minute candles of ``market`` whose start is >= ``since_s`` (Unix s), oldest first.

        Pages backwards with ``to`` (exclusive, UTC) 200 at a time, as Upbit serves them."""
        out: dict[int, dict] = {}
        to = None
        for _ in range(max_pages):
            params = {"market": market, "count": 200}
            if to is not None:
                params["to"] = to
            page = self.get(f"/v1/candles/minutes/{unit_min}", params)
            if not page:
                break
            oldest = None
            for c in page:
                t = candle_start(c["candle_date_time_utc"])
                if t >= since_s:
                    out[t] = c
                oldest = t if oldest is None else min(oldest, t)
            if oldest is None or oldest <= since_s or len(page) < 200:
                break
            to = datetime.fromtimestamp(oldest, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return [out[t] for t in sorted(out)]

    # -- what the market code is handed --------------------------------------------------------
    def candle_history(self, market: str, unit_min: int, since_s: int, max_pages: int) -> tuple[np.ndarray, int]:
        """:meth:`candles` as CANDLE_DTYPE records (BACKFILLED) and their last tick (Unix ms).
        Raises :class:`FetchError` for a failure worth retrying."""
        try:
            return parse_rest_candles(self.candles(market, unit_min, since_s, max_pages))
        except RETRYABLE as e:
            raise FetchError(f"{market} candles: {e}") from e

    def tickers(self, codes: list[str]) -> list[Ticker]:
        """``GET /v1/ticker`` for ``codes`` (batches of 50). Rows that do not parse are skipped.
        Raises :class:`FetchError`."""
        out = []
        try:
            for i in range(0, len(codes), 50):
                out += [t for t in map(parse_ticker, self.get("/v1/ticker", {"markets": ",".join(codes[i:i + 50])}))
                        if t is not None]
        except RETRYABLE as e:
            raise FetchError(f"tickers: {e}") from e
        return out

    def market_all(self) -> list[dict]:
        """``GET /v1/market/all?is_details=true``. Raises :class:`FetchError`."""
        try:
            doc = self.get("/v1/market/all", {"is_details": "true"})
        except RETRYABLE as e:
            raise FetchError(f"market/all: {e}") from e
        if not isinstance(doc, list):
            raise FetchError(f"market/all: expected a list, got {type(doc).__name__}")
        return doc
