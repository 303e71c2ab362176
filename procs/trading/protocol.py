"""The trader's command protocol (DESIGN §5): length-prefixed JSON frames over a Unix stream socket.

Frame: a 4-byte big-endian unsigned length ``n`` then ``n`` bytes of UTF-8 JSON holding one object.
Frames longer than ``max_frame_bytes`` are refused as soon as their prefix is read (the announced
size is never allocated); the connection is then closed.

Every message carries the header ``{"v": 1, "type": str, "ts": float (Unix seconds), "run_id": str,
"symbol": str | null, "seq": int >= 0, "payload": object}``. Commands go to the trader (:data:`COMMANDS`);
each is answered by one ACK::

    {"v": 1, "type": "ACK", "ts": ..., "run_id": <the server's run_id>, "symbol": <echo>,
     "seq": <the command's seq, or null when it could not be read>, "ok": bool,
     "error": {"code": str, "message": str} | null, "payload": any}

A subscriber (``EVENT.SUBSCRIBE``) then receives events (:data:`EVENTS`) with the same header, ``seq``
counting per subscriber. Error codes: :data:`PROTOCOL_ERRORS` from the transport, plus those the
engine raises as :class:`CommandError` (``REFUSED``, ``INVALID``, ``NOT_FOUND``, ...).

Pure: no I/O here (the engine's core may import :class:`CommandError` and :class:`Command`); the
socket is :mod:`.server`'s and :mod:`.client`'s.
"""
from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1
PREFIX = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20   #: bytes of JSON per frame (``trader.max_frame_bytes``)

COMMANDS = ("PING", "ENGINE.STATUS", "SNAPSHOT.GET", "EVENT.SUBSCRIBE", "CONFIG.APPLY", "LIVE.ARM", "LIVE.DISARM",
            "KILL.SWITCH", "KILL.RESET", "ORDER.CANCEL", "POSITION.EXIT", "POSITIONS.GET", "ORDERS.GET", "PNL.GET",
            "TIMELINE.GET")
EVENTS = ("EVT.HEARTBEAT", "ENGINE.STATUS.UPDATE", "CONFIG.UPDATED", "MODE.ARMED", "MODE.DISARMED", "MODE.KILLED",
          "DATA.CANDLE.UPDATE", "DATA.CANDLE.CLOSE", "INDICATOR.UPDATE", "TIMELINE.EVENT", "ORDER.UPDATE", "FILL")
ACK = "ACK"

#: codes the transport answers with (the engine's own: REFUSED, INVALID, NOT_FOUND, ...)
PROTOCOL_ERRORS = ("FRAME_TOO_LARGE", "BAD_JSON", "BAD_HEADER", "BAD_VERSION", "UNKNOWN_TYPE", "OUT_OF_ORDER",
                   "TOO_MANY_CLIENTS", "INTERNAL")

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class CommandError(Exception):
    """A command refused or failed: ``code`` (e.g. ``REFUSED``, ``INVALID``, ``NOT_FOUND``) and a
    human ``message``. The engine's handler raises it; the server turns it into an error ACK."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(CommandError):
    """A frame or header the transport refuses. ``fatal``: the stream can no longer be trusted and
    the connection is closed after the error ACK (``FRAME_TOO_LARGE``)."""

    def __init__(self, code: str, message: str, *, fatal: bool = False):
        super().__init__(code, message)
        self.fatal = fatal


@dataclass(frozen=True)
class Command:
    """A validated command as the handler sees it. ``ts`` Unix seconds (the client's clock);
    ``peer`` the sender from SO_PEERCRED, ``"pid 1234 uid 1000"`` (for the audit trail)."""
    type: str
    ts: float
    run_id: str
    symbol: str | None
    seq: int
    payload: dict
    peer: str


#: the engine's entry point: returns the ACK payload (anything JSON-serialisable) or raises CommandError
Handler = Callable[[Command], Any]


def dumps(obj: Any) -> bytes:
    """JSON bytes (orjson; numpy arrays and scalars allowed, NaN becomes null). Raises TypeError."""
    return orjson.dumps(obj, option=_JSON_OPTS)


def encode(msg: dict) -> bytes:
    """One frame: the length prefix and the JSON of ``msg``. Raises TypeError if not serialisable."""
    body = dumps(msg)
    return PREFIX.pack(len(body)) + body


def frame(body: bytes) -> bytes:
    """A frame around already encoded JSON ``body``."""
    return PREFIX.pack(len(body)) + body


def make_command(type: str, payload: dict | None = None, symbol: str | None = None, *, seq: int = 0,
                 run_id: str = "", ts: float | None = None) -> dict:
    """A command message (not yet encoded); ``ts`` defaults to now."""
    return {"v": VERSION, "type": type, "ts": time.time() if ts is None else ts, "run_id": run_id,
            "symbol": symbol, "seq": seq, "payload": {} if payload is None else payload}


def make_ack(run_id: str, *, seq: int | None, symbol: str | None, ok: bool, error: tuple[str, str] | None = None,
             payload: Any = None) -> dict:
    """An ACK message; ``error`` is ``(code, message)`` when ``ok`` is false."""
    err = None if error is None else {"code": error[0], "message": error[1]}
    return {"v": VERSION, "type": ACK, "ts": time.time(), "run_id": run_id, "symbol": symbol, "seq": seq,
            "ok": ok, "error": err, "payload": payload}


def event_head(type: str, payload: Any, *, run_id: str, symbol: str | None = None) -> bytes:
    """An event's JSON without its ``seq``, open at the end (``...,"payload":{...}``): encoded once
    by :meth:`CommandServer.publish`, closed per subscriber by :func:`event_frame`."""
    body = dumps({"v": VERSION, "type": type, "ts": time.time(), "run_id": run_id, "symbol": symbol,
                  "payload": payload})
    return body[:-1]


def event_frame(head: bytes, seq: int) -> bytes:
    """The frame of an event ``head`` (:func:`event_head`) with this subscriber's ``seq``."""
    tail = b',"seq":%d}' % seq
    return PREFIX.pack(len(head) + len(tail)) + head + tail


class FrameDecoder:
    """Incremental frame splitter. :meth:`feed` bytes, get complete JSON bodies back. The buffer never
    holds more than ``max_frame_bytes + 4`` bytes after a feed; :meth:`room` says how many more may be
    read without passing that (read at most that much)."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME):
        self.max = max_frame_bytes
        self.buf = bytearray()

    def room(self, chunk: int = 65536) -> int:
        """Bytes to read next: at most ``chunk``, never past one frame's worth of buffer (>= 1)."""
        return max(1, min(chunk, self.max + PREFIX.size - len(self.buf)))

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the complete frame bodies now available, in order.

        Raises ProtocolError(FRAME_TOO_LARGE, fatal) as soon as a prefix announces more than the
        limit (frames before it in ``data`` are lost with the connection)."""
        self.buf += data
        out = []
        while len(self.buf) >= PREFIX.size:
            (n,) = PREFIX.unpack_from(self.buf)
            if n > self.max:
                self.buf.clear()
                raise ProtocolError("FRAME_TOO_LARGE", f"frame of {n} bytes announced; the limit is {self.max}",
                                    fatal=True)
            if len(self.buf) < PREFIX.size + n:
                break
            out.append(bytes(self.buf[PREFIX.size:PREFIX.size + n]))
            del self.buf[:PREFIX.size + n]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self.buf)


def decode(body: bytes) -> dict:
    """Parse a frame body into a JSON object. Raises ProtocolError(BAD_JSON)."""
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ProtocolError("BAD_JSON", f"not UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("BAD_JSON", f"a message is a JSON object, not {type(msg).__name__}")
    try:   # a key given twice is ambiguous ({"type":"PING",...,"type":"KILL.SWITCH"}): refused, not "last wins"
        json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ProtocolError("BAD_JSON", "nested too deeply") from None
    return msg


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ProtocolError("BAD_JSON", f"key {dup!r:.40} appears twice in one object")
    return dict(pairs)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_FIELDS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("type", "a string", lambda x: isinstance(x, str)),
    ("ts", "a finite number (Unix seconds)",
     lambda x: (_is_int(x) or isinstance(x, float)) and math.isfinite(x)),
    ("run_id", "a string", lambda x: isinstance(x, str)),
    ("symbol", "a string or null", lambda x: x is None or isinstance(x, str)),
    ("seq", "an integer >= 0", lambda x: _is_int(x) and x >= 0),
    ("payload", "an object", lambda x: isinstance(x, dict)),
)


def validate_header(msg: dict) -> None:
    """Check the header of a decoded message. Raises ProtocolError: BAD_HEADER naming the first
    missing or ill-typed field, BAD_VERSION when ``v`` is an integer other than 1."""
    if "v" not in msg or not _is_int(msg["v"]):
        raise ProtocolError("BAD_HEADER", "field 'v' must be an integer" if "v" in msg else "missing field 'v'")
    if msg["v"] != VERSION:
        raise ProtocolError("BAD_VERSION", f"protocol version {msg['v']} is not supported (this server speaks "
                                           f"{VERSION})")
    for name, what, ok in _FIELDS:
        if name not in msg:
            raise ProtocolError("BAD_HEADER", f"missing field {name!r}")
        if not ok(msg[name]):
            raise ProtocolError("BAD_HEADER", f"field {name!r} must be {what}, got {msg[name]!r:.60}")


def check_type(type: str, known: tuple[str, ...] = COMMANDS) -> None:
    """Raises ProtocolError(UNKNOWN_TYPE) naming the known types."""
    if type not in known:
        raise ProtocolError("UNKNOWN_TYPE", f"unknown type {type!r:.60}; known: {', '.join(known)}")


def echo(msg: Any) -> tuple[int | None, str | None]:
    """``(seq, symbol)`` to echo in an ACK from a message that may be invalid (None where unusable)."""
    if not isinstance(msg, dict):
        return None, None
    seq, sym = msg.get("seq"), msg.get("symbol")
    return (seq if _is_int(seq) and seq >= 0 else None), (sym if isinstance(sym, str) else None)

