"""What the replay exchange does wrong on purpose: fault injection and Upbit's REST limits.

:class:`FaultInjector` holds the faults switched on at run time through the exchange's admin
endpoint (``POST /faults``, ``smtm fault ...``); the exchange asks it, per frame or request,
what to do. Faults (``type`` and parameters):

=============  ==========================================================================
``drop``       close every WebSocket connection abruptly (no close frame), now, and
               refuse new connections for ``seconds`` (an outage; 0 = reconnect at once)
``stall``      keep connections open but send nothing for ``seconds`` (trades still
               happen on the exchange: the client misses them)
``malformed``  the next ``count`` trades each come with one extra bad frame (not JSON,
               invalid UTF-8, NaN/negative/missing fields, wrong types, unknown type)
``duplicate``  the next ``count`` trades are sent twice
``reorder``    the next ``count`` trades are held back and sent after the following trade
               of the same market
``rest_429``   the next ``count`` REST requests answer 429
``rest_418``   REST answers 418 for ``seconds`` (Upbit's block after ignoring 429s)
``rest_slow``  the next ``count`` REST responses are delayed by ``seconds``
=============  ==========================================================================

Order faults (the private API, ``POST /v1/orders`` and the fills; each applies to the next ``count``):

==================  =====================================================================
``order_hold``      hold the request ``seconds`` before placing it; a client that gives up
                    (or dies) meanwhile never gets the order placed — the window between
                    the trader's ledger commit and the exchange receiving the order
``order_drop``      place the order, then drop the connection without an answer
``order_500``       place the order, then answer 500
``order_slow``      place the order, then answer after ``seconds`` (past a client timeout)
``order_429``       answer 429 without placing
``order_reject``    answer 400 ``create_bid_error`` / ``create_ask_error`` without placing
``order_partial``   the order's first fill is half of what the trade gives, then it stalls
                    for ``seconds`` (0: until cancelled)
``fill_duplicate``  the next fill is listed twice in its order's trades
==================  =====================================================================

``clear`` switches every pending fault off (counts to 0, outages and stalls ended).

:class:`RestLimits` enforces Upbit's per-group REST budget (``sec`` requests per second per
group, announced in ``Remaining-Req``): over it a request gets 429; a client that keeps
sending after ``block_after`` 429s within 10 s is blocked with 418 for ``block_s`` seconds,
doubling on repeat (Upbit escalates; the exact schedule is not published).
"""
from __future__ import annotations

import json
import math
import time
from collections import deque

from ..upbit.rest import GROUP_LIMITS

ORDER_FAULTS = ("order_hold", "order_drop", "order_500", "order_slow", "order_429", "order_reject", "order_partial",
                "fill_duplicate")
FAULT_TYPES = ("drop", "stall", "malformed", "duplicate", "reorder", "rest_429", "rest_418", "rest_slow",
               *ORDER_FAULTS, "clear")

#: The bad frames cycled through by ``malformed`` (bytes as sent on the wire).
MALFORMED_FRAMES = (
    b"{not json",
    b"\xff\xfe\x00garbage",
    json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": float("nan"), "trade_volume": 1.0,
                "trade_timestamp": 1, "timestamp": 1}).encode(),
    json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": -1.0, "trade_volume": 1.0,
                "trade_timestamp": 1, "timestamp": 1}).encode(),
    json.dumps({"type": "trade", "code": "KRW-BTC", "trade_volume": 1.0}).encode(),
    json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": "123", "trade_volume": 1.0,
                "trade_timestamp": 1, "timestamp": 1}).encode(),
    json.dumps({"type": "warp", "code": "KRW-BTC"}).encode(),
    json.dumps([1, 2, 3]).encode(),
)


class FaultError(ValueError):
    """A fault request with an unknown type or a bad parameter."""


class FaultInjector:
    """Current faults and the per-frame / per-request decisions (single-threaded: asyncio)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.stall_until = 0.0
        self.malformed_left = 0
        self.duplicate_left = 0
        self.reorder_left = 0
        self.rest_429_left = 0
        self.rest_418_until = 0.0
        self.rest_slow_left = 0
        self.rest_slow_s = 0.0
        self.refuse_until = 0.0
        self._malformed_i = 0
        self.order_left: dict[str, int] = dict.fromkeys(ORDER_FAULTS, 0)
        self.order_seconds: dict[str, float] = dict.fromkeys(ORDER_FAULTS, 0.0)
        self.in_flight = {"held": 0, "answering": 0}   # order requests inside an order_hold / order_slow now
        self.applied: dict[str, int] = dict.fromkeys(FAULT_TYPES, 0)

    def apply(self, req: dict) -> dict:
        """Switch a fault on. ``req``: ``{"type": ..., "count": n, "seconds": s}``. Raises FaultError."""
        ty = req.get("type")
        if ty not in FAULT_TYPES:
            raise FaultError(f"type must be one of {', '.join(FAULT_TYPES)}")
        count = req.get("count", 1)
        seconds = req.get("seconds", 0.0)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1_000_000:
            raise FaultError("count must be an integer in 0..1000000")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) \
                or not 0 <= seconds <= 3600:
            raise FaultError("seconds must be a number in 0..3600")
        now = self.clock()
        if ty == "clear":
            self.refuse_until = self.stall_until = self.rest_418_until = 0.0
            self.malformed_left = self.duplicate_left = self.reorder_left = self.rest_429_left = 0
            self.rest_slow_left = 0
            self.order_left = dict.fromkeys(ORDER_FAULTS, 0)
        elif ty == "drop":
            self.refuse_until = now + float(seconds)
        elif ty == "stall":
            self.stall_until = now + float(seconds)
        elif ty == "malformed":
            self.malformed_left += count
        elif ty == "duplicate":
            self.duplicate_left += count
        elif ty == "reorder":
            self.reorder_left += count
        elif ty == "rest_429":
            self.rest_429_left += count
        elif ty == "rest_418":
            self.rest_418_until = now + float(seconds)
        elif ty == "rest_slow":
            self.rest_slow_left += count
            self.rest_slow_s = float(seconds)
        else:
            self.order_left[ty] += count
            self.order_seconds[ty] = float(seconds)
        self.applied[ty] += 1
        return self.state()

    def state(self) -> dict:
        now = self.clock()
        return {"refuse_s_left": max(0.0, self.refuse_until - now), "stall_s_left": max(0.0, self.stall_until - now),
                "malformed_left": self.malformed_left,
                "duplicate_left": self.duplicate_left, "reorder_left": self.reorder_left,
                "rest_429_left": self.rest_429_left, "rest_418_s_left": max(0.0, self.rest_418_until - now),
                "rest_slow_left": self.rest_slow_left, "rest_slow_s": self.rest_slow_s,
                **{f"{k}_left": v for k, v in self.order_left.items()}, "orders_in_flight": dict(self.in_flight),
                "applied": dict(self.applied)}

    # -- orders ---------------------------------------------------------------------------------------
    def take_order(self, kind: str) -> float | None:
        """If an order fault ``kind`` is pending, use one: its ``seconds``; else None."""
        if self.order_left[kind] <= 0:
            return None
        self.order_left[kind] -= 1
        return self.order_seconds[kind]

    # -- WebSocket side -------------------------------------------------------------------
    def refusing(self) -> bool:
        return self.clock() < self.refuse_until

    def stalled(self) -> bool:
        return self.clock() < self.stall_until

    def take_malformed(self) -> bytes | None:
        if self.malformed_left <= 0:
            return None
        self.malformed_left -= 1
        frame = MALFORMED_FRAMES[self._malformed_i % len(MALFORMED_FRAMES)]
        self._malformed_i += 1
        return frame

    def take_duplicate(self) -> bool:
        if self.duplicate_left <= 0:
            return False
        self.duplicate_left -= 1
        return True

    def take_reorder(self) -> bool:
        if self.reorder_left <= 0:
            return False
        self.reorder_left -= 1
        return True

    # -- REST side --------------------------------------------------------------------------
    def rest_fault(self) -> tuple[int, float] | None:
        """``(status, delay_s)`` to impose on the next REST request, or None."""
        now = self.clock()
        if now < self.rest_418_until:
            return 418, 0.0
        if self.rest_429_left > 0:
            self.rest_429_left -= 1
            return 429, 0.0
        if self.rest_slow_left > 0:
            self.rest_slow_left -= 1
            return 0, self.rest_slow_s
        return None


#: The exchange API's groups (PROTOCOL.md §3.2, the client's :data:`~procs.upbit.rest.GROUP_LIMITS`): (requests,
#: window in s), per account — a limit under one a second (order-cancel-all: 0.5) is one request per 1/limit s.
EXCHANGE_GROUPS = {g: ((int(GROUP_LIMITS[g]), 1.0) if GROUP_LIMITS[g] >= 1 else (1, 1.0 / GROUP_LIMITS[g]))
                   for g in ("default", "order", "order-cancel-all")}


def limit_answer(group: str, status: int, left: int, blocked_s: float) -> tuple[str, tuple[int, str, str] | None,
                                                                                 int | None]:
    """How the exchange answers a request after its rate-limit check (status 200 / 429 / 418): the
    ``Remaining-Req`` header, the error (status, Upbit name, message) or None, and ``Retry-After`` s for a 418."""
    rem = f"group={group}; min=1800; sec={left}"
    if status == 429:
        return rem, (429, "too_many_requests", "Too many API requests."), None
    if status == 418:
        secs = max(1, math.ceil(blocked_s))
        return rem, (418, "blocked", f"Blocked for {secs} seconds after repeated rate-limit violations."), secs
    return rem, None, None


class RestLimits:
    """Upbit's per-group REST limit (``sec`` per second; the exchange groups of :data:`EXCHANGE_GROUPS`
    their own), 429 over it, 418 for persistent offenders."""

    def __init__(self, per_second: int = 10, block_after: int = 20, block_s: float = 5.0, clock=time.monotonic,
                 groups: dict[str, tuple[int, float]] | None = None):
        self.per_second = per_second
        self.groups = dict(EXCHANGE_GROUPS if groups is None else groups)
        self.block_after = block_after
        self.block_s = block_s
        self.clock = clock
        self._windows: dict[str, deque] = {}
        self._violations: deque = deque()
        self.blocked_until = 0.0
        self.blocks = 0
        self.accepted_log: deque = deque(maxlen=10_000)  # (monotonic time, group) of every accepted request
        self.sent_log: deque = deque(maxlen=10_000)      # (monotonic time, group) of every request

    def check(self, group: str) -> tuple[int, int, float]:
        """Account one request: ``(status, remaining_this_second, blocked_s_left)``; status 200/429/418."""
        now = self.clock()
        self.sent_log.append((now, group))
        if now < self.blocked_until:
            return 418, 0, self.blocked_until - now
        limit, window = self.groups.get(group, (self.per_second, 1.0))
        win = self._windows.setdefault(group, deque())
        while win and now - win[0] >= window:
            win.popleft()
        if len(win) >= limit:
            self._violations.append(now)
            while self._violations and now - self._violations[0] > 10.0:
                self._violations.popleft()
            if len(self._violations) >= self.block_after:
                self.blocks += 1
                self.blocked_until = now + self.block_s * (2 ** (self.blocks - 1))
                self._violations.clear()
                return 418, 0, self.blocked_until - now
            return 429, 0, 0.0
        win.append(now)
        self.accepted_log.append((now, group))
        return 200, limit - len(win), 0.0

    def max_in_any_second(self, group: str, sent: bool = False) -> int:
        """Most accepted (or, ``sent=True``, sent) requests of ``group`` in any 1-second window."""
        ts = [t for t, g in (self.sent_log if sent else self.accepted_log) if g == group]
        best = j = 0
        for i in range(len(ts)):
            while ts[i] - ts[j] >= 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best
