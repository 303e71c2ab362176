"""The Upbit WebSocket session: one connection kept alive across everything the network does.

:class:`WebSocketSession` (websocket-client underneath) runs the connection loop on a worker
thread and hands every received frame to a callback; the owning process calls :meth:`tick`
from its own loop for what must happen on time:

* keep-alive: WebSocket ping frames every ``ping_interval_s`` and the text ``PING`` every
  ``keepalive_s`` (Upbit answers ``{"status":"UP"}``), well inside Upbit's 120 s idle limit;
* stall detection: a connection silent for ``stall_timeout_s`` (no frame at all) is closed;
* reconnects with exponential backoff (``backoff_base_s`` doubling to ``backoff_cap_s``, ±50 %
  jitter), never more than ``max_connects_per_s`` attempts per second; the URL is asked for
  again at each attempt (a replay exchange restarted on another port is found; one that has not
  published its address yet is waited for, which is no reconnect);
* every message sent — subscriptions and keep-alives — goes through :class:`SendLimiter`
  (Upbit: 5 per second, 100 per minute, per connection); a subscription that must wait is sent
  by a later tick, and pending changes coalesce into one complete subscription (Upbit replaces
  a subscription, it never adds to it);
* ``on_resume`` is called before the first frame after a (re)connect and before the first frame
  after a silence longer than 1.5 keep-alive periods (a hole in time): the caller repairs history.

:meth:`abort` is signal-safe (it only shuts the socket down).
"""
from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
from collections import deque
from collections.abc import Callable

import websocket

from ..runtime.clock import SYSTEM_CLOCK, Clock
from ..runtime.config import IngestConfig
from ..runtime.endpoints import EndpointUnavailable

log = logging.getLogger("smtm.ingest")


class SendLimiter:
    """Upbit's per-connection message limit: ``per_s`` per second and ``per_min`` per minute."""

    def __init__(self, per_s: int = 5, per_min: int = 100, clock: Callable[[], float] = SYSTEM_CLOCK.monotonic):
        self.per_s, self.per_min, self.clock = per_s, per_min, clock
        self.sent: deque = deque()

    def allow(self) -> bool:
        now = self.clock()
        while self.sent and now - self.sent[0] >= 60.0:
            self.sent.popleft()
        last_s = sum(1 for t in self.sent if now - t < 1.0)
        return last_s < self.per_s and len(self.sent) < self.per_min

    def record(self) -> None:
        self.sent.append(self.clock())


class Backoff:
    """Exponential backoff with ±50 % jitter, capped."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base, self.cap = base_s, cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        d = min(self.cap, self.base * 2 ** (self.attempt - 1))
        return d * (0.5 + self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class WebSocketSession:
    """A self-healing WebSocket client. ``url()`` gives the address at each connect;
    ``subscription()`` the complete request to send; ``on_open()`` runs on connect before the
    subscription goes out; ``on_frame(data)`` gets every frame; ``on_resume()`` runs before the
    first frame after a (re)connect or a hole (see the module)."""

    def __init__(self, url: Callable[[], str], cfg: IngestConfig, *, subscription: Callable[[], str],
                 on_frame: Callable[[bytes | str], None], on_resume: Callable[[], None] = lambda: None,
                 on_open: Callable[[], None] = lambda: None,
                 stop: threading.Event, clock: Clock = SYSTEM_CLOCK):
        self.url = url
        self.cfg = cfg
        self.subscription = subscription
        self.on_frame = on_frame
        self.on_resume = on_resume
        self.on_open = on_open
        self.stop = stop
        self.clock = clock
        self.app: websocket.WebSocketApp | None = None
        self.connected = False
        self.reconnects = 0
        self.errors = 0
        self.target = ""
        self.last_frame = 0.0
        self.last_ping = 0.0
        self.send_limiter = SendLimiter(clock=clock.monotonic)
        self.subscription_pending = False
        self.backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s)
        self.hole_s = 1.5 * cfg.keepalive_s  # the UP answers make longer silences a hole
        self._resume_pending = False

    # -- the connection loop (worker thread) ------------------------------------------------------
    def run(self) -> None:
        """Connect, read, reconnect with backoff — until ``stop`` is set."""
        last_connect = -1e18
        while not self.stop.is_set():
            try:
                self.target = self.url()
            except EndpointUnavailable as e:   # the replay exchange has not published its port (yet)
                if self.target != "?":
                    log.info("waiting for an address: %s", e)
                    self.target = "?"
                if self.clock.wait(self.stop, 0.2):
                    break
                continue
            gap = 1.0 / self.cfg.max_connects_per_s - (self.clock.monotonic() - last_connect)
            if gap > 0 and self.clock.wait(self.stop, gap):
                break
            last_connect = self.clock.monotonic()
            opened_at = last_connect
            self.app = websocket.WebSocketApp(self.target, on_open=self._on_open, on_message=self._on_message,
                                              on_error=self._on_error, on_close=self._on_close)
            self.app.run_forever(ping_interval=self.cfg.ping_interval_s, ping_timeout=self.cfg.ping_timeout_s,
                                 skip_utf8_validation=True)
            self.connected = False
            if self.stop.is_set():
                break
            if self.last_frame > opened_at:  # it worked for a while: start the backoff over
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self.reconnects += 1
            log.info("reconnecting to %s in %.2f s (attempt %d)", self.target or "?", delay, self.backoff.attempt)
            if self.clock.wait(self.stop, delay):
                break

    def _on_open(self, ws) -> None:
        self.connected = True
        self.last_frame = self.clock.monotonic()
        self.send_limiter = SendLimiter(clock=self.clock.monotonic)  # the limit is per connection
        self._resume_pending = True
        self.on_open()   # before the subscription: the stream has not started yet
        self._send_subscription(ws)
        log.info("connected to %s", self.target)

    def _on_message(self, ws, data) -> None:
        now = self.clock.monotonic()
        if self._resume_pending or now - self.last_frame > self.hole_s:
            self._resume_pending = False
            self.on_resume()
        self.last_frame = now
        self.on_frame(data)

    def _on_close(self, ws, code, reason) -> None:
        self.connected = False
        log.warning("connection closed (%s %s)", code, reason)

    def _on_error(self, ws, err) -> None:
        self.errors += 1
        log.warning("websocket error: %s", err)

    def _send_subscription(self, ws) -> None:
        if self.send_limiter.allow():
            ws.send(self.subscription())
            self.send_limiter.record()
            self.subscription_pending = False
        else:
            self.subscription_pending = True

    # -- the owner's tick --------------------------------------------------------------------------
    def resubscribe(self) -> None:
        """Send the complete subscription again (by the next tick, within the send limit)."""
        self.subscription_pending = True

    def tick(self) -> None:
        """Pending subscription, keep-alive and stall detection; call every ``heartbeat_s``."""
        app = self.app
        if not (self.connected and app is not None):
            return
        now = self.clock.monotonic()
        try:
            if self.subscription_pending:
                self._send_subscription(app)
            if now - self.last_ping >= self.cfg.keepalive_s and self.send_limiter.allow():
                app.send("PING")
                self.send_limiter.record()
                self.last_ping = now
        except websocket.WebSocketException as e:
            log.warning("send failed: %s", e)
        if now - self.last_frame > self.cfg.stall_timeout_s:
            log.warning("no frame for %.1f s: connection stalled, reconnecting", now - self.last_frame)
            self._shutdown_socket()

    def abort(self) -> None:
        """End the read loop now (signal-safe: a socket shutdown)."""
        if self.app is not None:
            self.app.keep_running = False
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        sock = getattr(getattr(self.app, "sock", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
