"""Upbit's WebSocket protocol as the replay exchange speaks it: subscription requests, the
connection's client state, and message shapes (PROTOCOL.md §1).

A text message holding a JSON array ``[{"ticket":..}, {"type":"trade","codes":[..]}, ..,
{"format":"DEFAULT|SIMPLE|JSON_LIST|SIMPLE_LIST"}]`` **replaces** the connection's subscription;
data frames are binary frames of UTF-8 JSON; errors come back as ``{"error":{"name":..,
"message":..}}`` with Upbit's names (NO_TICKET, NO_TYPE, NO_CODES, WRONG_FORMAT, INVALID_PARAM).
"""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

import orjson
from aiohttp import web

CANDLE_UNITS = (30, 60, 240)       # minutes the replay can serve exactly from 30-minute data
KST = timezone(timedelta(hours=9))
FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
#: what a send to a connection that died under us raises (aiohttp: ConnectionResetError and
#: other ConnectionErrors from drain, RuntimeError on a closing transport)
SEND_ERRORS = (ConnectionError, RuntimeError)


def utc_str(ts_s: int, tz=UTC) -> str:
    return datetime.fromtimestamp(ts_s, tz).strftime("%Y-%m-%dT%H:%M:%S")


class SubscriptionError(ValueError):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _parse_type(el: dict, types: dict[str, set[str]], realtime: dict[str, bool]) -> None:
    ty = el["type"]
    codes = el.get("codes")
    if not codes or not isinstance(codes, list):
        raise SubscriptionError("NO_CODES", f"type {ty!r} has no codes")
    if ty not in ("trade", "ticker") and ty not in {f"candle.{u}m" for u in CANDLE_UNITS}:
        raise SubscriptionError("INVALID_PARAM", f"type {ty!r} is not served by the replay exchange")
    if any(not isinstance(c, str) or c != c.upper() for c in codes):
        raise SubscriptionError("INVALID_PARAM", "codes must be upper-case market codes")
    types.setdefault(ty, set()).update(codes)
    realtime[ty] = bool(el.get("is_only_realtime", el.get("isOnlyRealtime", False)))


def parse_request(req) -> tuple[str, dict[str, set[str]], str, dict[str, bool]] | None:
    """Validate an Upbit subscription request.

    Returns ``(ticket, {type: codes}, format, {type: is_only_realtime})``, or None for a
    ``LIST_SUBSCRIPTIONS`` request. Raises :class:`SubscriptionError` with Upbit's error name.
    """
    if not isinstance(req, list) or not req or not isinstance(req[0], dict) or "ticket" not in req[0]:
        raise SubscriptionError("NO_TICKET", "the first element must be {\"ticket\": ...}")
    ticket = str(req[0]["ticket"])
    types: dict[str, set[str]] = {}
    realtime: dict[str, bool] = {}
    fmt = "DEFAULT"
    method = None
    for el in req[1:]:
        if not isinstance(el, dict):
            raise SubscriptionError("WRONG_FORMAT", "every element must be an object")
        if "format" in el:
            fmt = str(el["format"]).upper()
            if fmt not in FORMATS:
                raise SubscriptionError("WRONG_FORMAT", f"unknown format {el['format']!r}")
        elif "method" in el:
            method = el["method"]
        elif "type" in el:
            _parse_type(el, types, realtime)
        else:
            raise SubscriptionError("WRONG_FORMAT", f"unexpected element {el!r}")
    if method == "LIST_SUBSCRIPTIONS":
        return None
    if not types:
        raise SubscriptionError("NO_TYPE", "no type object in the request")
    return ticket, types, fmt, realtime


class Client:
    """One WebSocket connection and its current subscription.

    In a ``JSON_LIST`` / ``SIMPLE_LIST`` format the server batches several messages into one frame (Upbit's
    rule, PROTOCOL.md §1): while :attr:`batching` is set (the replayer sets it around the events it sends at
    one moment) messages wait in :attr:`pending` and go out as one array per :meth:`flush`, at most
    :attr:`LIST_MAX` to a frame. A lone message goes out at once as a one-element array."""

    LIST_MAX = 64   #: messages in one frame of a _LIST format

    def __init__(self, ws: web.WebSocketResponse, peer: str, transport=None):
        self.ws = ws
        self.peer = peer
        self.transport = transport
        self.types: dict[str, set[str]] = {}
        self.format = "DEFAULT"
        self.ticket = ""
        self.last_activity = time.monotonic()
        self.sent = 0          # frames sent (a _LIST frame holds several messages)
        self.batching = False
        self.pending: list = []

    def wants(self, ty: str, code: str) -> bool:
        codes = self.types.get(ty)
        return codes is not None and code in codes

    async def send_raw(self, frame: bytes) -> None:
        """Send one frame as it is (after the messages batched before it)."""
        if self.pending:
            await self.flush()
        await self._send(frame)

    async def _send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)
        self.sent += 1
        self.last_activity = time.monotonic()

    async def send_obj(self, default_obj: dict, simple_map: dict) -> None:
        """Send a message given in DEFAULT names, in this connection's format."""
        simple = self.format.startswith("SIMPLE")
        obj = {simple_map.get(k, k): v for k, v in default_obj.items()} if simple else default_obj
        if self.format.endswith("_LIST"):
            if self.batching:
                self.pending.append(obj)
                if len(self.pending) >= self.LIST_MAX:
                    await self.flush()
                return
            obj = [obj]
        await self._send(orjson.dumps(obj))

    async def flush(self) -> None:
        """Send the batched messages as one frame (a JSON array), if any."""
        if self.pending:
            objs, self.pending = self.pending, []
            await self._send(orjson.dumps(objs))

    async def send_error(self, name: str, message: str) -> None:
        await self.ws.send_bytes(json.dumps({"error": {"name": name, "message": message}}).encode())


@lru_cache(maxsize=64)
def _utc_date(day: int) -> str:
    """``YYYY-MM-DD`` of a day number (Unix days, UTC)."""
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def trade_message(code: str, ts: int, price: float, vol: float, bid: bool, seq_id: int, prev_close: float) -> dict:
    """An Upbit ``trade`` message (DEFAULT names) for a replayed trade (``ts``: Unix ms UTC)."""
    day, sod = divmod(ts // 1000, 86400)
    return {"type": "trade", "code": code, "timestamp": time.time_ns() // 1_000_000,
            "trade_date": _utc_date(day), "trade_time": f"{sod // 3600:02d}:{sod // 60 % 60:02d}:{sod % 60:02d}",
            "trade_timestamp": ts, "trade_price": price, "trade_volume": vol,
            "ask_bid": "BID" if bid else "ASK", "prev_closing_price": prev_close,
            "change": "RISE" if price > prev_close else "FALL" if price < prev_close else "EVEN",
            "change_price": abs(price - prev_close), "sequential_id": seq_id, "stream_type": "REALTIME"}


def candle_message(unit: int, code: str, partial: list, stream: str) -> dict:
    """An Upbit ``candle.<unit>m`` message (DEFAULT names) of a partial candle
    ``[t, o, h, l, c, v, value, last_ts]``."""
    t, o, h, l, c, v, val, last = partial
    return {"type": f"candle.{unit}m", "code": code, "candle_date_time_utc": utc_str(t),
            "candle_date_time_kst": utc_str(t, KST), "opening_price": o, "high_price": h, "low_price": l,
            "trade_price": c, "candle_acc_trade_volume": v, "candle_acc_trade_price": val,
            "timestamp": last, "stream_type": stream}
