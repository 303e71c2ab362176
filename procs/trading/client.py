"""A blocking client of the trader's command socket (used by ``smtm``; protocol: :mod:`.protocol`).

    with TraderClient(cfg.run_dir / "trader.sock") as t:
        ack = t.request("LIVE.ARM", {"reason": "morning"})   # the ACK dict: ack["ok"], ack["error"], ack["payload"]
        for ev in t.events(["ORDER.", "FILL"]):              # after EVENT.SUBSCRIBE; blocks
            ...
"""
from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from .protocol import ACK, CommandError, FrameDecoder, ProtocolError, decode, encode, make_command

CLIENT_MAX_FRAME = 64 << 20   #: the largest answer accepted (a snapshot can be big; the server is trusted)


class TraderUnavailable(RuntimeError):
    """The trader cannot be reached (no socket, nobody listening, no answer in time, connection lost)."""


class TraderClient:
    """One connection to the trader at ``path``, opened on first use. ``timeout_s`` bounds connecting
    and waiting for each ACK (events wait without limit). Not thread-safe."""

    def __init__(self, path: Path | str, timeout_s: float = 5.0, *, run_id: str | None = None):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.run_id = run_id or f"cli-{os.getpid()}"
        self._sock: socket.socket | None = None
        self._dec = FrameDecoder(CLIENT_MAX_FRAME)
        self._frames: deque[bytes] = deque()
        self._events: deque[dict] = deque()
        self._seq = 0

    def __enter__(self) -> TraderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        hint = "is the trader running? `smtm status`"
        if not self.path.exists():
            raise TraderUnavailable(f"no trader socket at {self.path}: {hint}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            s.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            raise TraderUnavailable(f"nobody answers on {self.path}: {hint}") from None
        except OSError as e:
            s.close()
            raise TraderUnavailable(f"cannot connect to {self.path} ({e}): {hint}") from None
        self._sock = s
        return s

    def request(self, type: str, payload: dict | None = None, symbol: str | None = None) -> dict:
        """Send one command, return its ACK (``ok`` false carries ``error: {code, message}``).
        Events that arrive meanwhile are kept for :meth:`events`. Raises TraderUnavailable."""
        s = self._connect()
        self._seq += 1
        seq = self._seq
        try:
            s.sendall(encode(make_command(type, payload, symbol, seq=seq, run_id=self.run_id)), socket.MSG_NOSIGNAL)
        except OSError as e:   # refused at once (TOO_MANY_CLIENTS): its ACK may be waiting
            msg = self._next(0.5)
            if msg.get("type") == ACK and msg.get("seq") is None:
                return msg
            self.close()
            raise TraderUnavailable(f"the trader at {self.path} closed the connection ({e})") from None
        while True:
            msg = self._next(self.timeout_s)
            if msg.get("type") == ACK and msg.get("seq") in (seq, None):
                return msg
            if msg.get("type") != ACK:
                self._events.append(msg)

    def events(self, types: list[str] | None = None) -> Iterator[dict]:
        """Subscribe (EVENT.SUBSCRIBE, ``types`` = type prefixes, None = all) and yield every event
        dict as it arrives (blocks). The subscription is made by this call, before the first
        ``next()``. Raises CommandError if it is refused; the iterator raises TraderUnavailable when
        the connection ends."""
        ack = self.request("EVENT.SUBSCRIBE", {"types": types} if types else {})
        if not ack["ok"]:
            raise CommandError(ack["error"]["code"], ack["error"]["message"])
        return self._stream()

    def _stream(self) -> Iterator[dict]:
        while True:
            while self._events:
                yield self._events.popleft()
            msg = self._next(None)
            if msg.get("type") != ACK:
                yield msg

    def _next(self, timeout_s: float | None) -> dict:
        """The next message from the server (blocking up to ``timeout_s``; None = forever)."""
        while not self._frames:
            s = self._sock
            if s is None:
                raise TraderUnavailable(f"not connected to the trader at {self.path}")
            s.settimeout(timeout_s)
            try:
                data = s.recv(self._dec.room(1 << 20))
            except TimeoutError:
                raise TraderUnavailable(f"the trader at {self.path} did not answer within {timeout_s:g} s") from None
            except OSError as e:
                self.close()
                raise TraderUnavailable(f"connection to the trader at {self.path} lost ({e})") from None
            if not data:
                self.close()
                raise TraderUnavailable(f"the trader at {self.path} closed the connection")
            try:
                self._frames.extend(self._dec.feed(data))
            except ProtocolError as e:
                self.close()
                raise TraderUnavailable(f"the trader at {self.path} sent a bad frame: {e}") from None
        try:
            return decode(self._frames.popleft())
        except ProtocolError as e:
            self.close()
            raise TraderUnavailable(f"the trader at {self.path} sent a bad message: {e}") from None
