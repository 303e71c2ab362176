"""The gateway's WebSocket channels: shared memory polled (read-only) on the server's event loop, each change put
on the queue of every client that wants it.

Channels (``/ws/<name>``; every message is a JSON object with ``channel`` and ``type``):

* ``market`` — the client subscribes (``{"subscribe": [{"market": "KRW-BTC", "tf": "30m"}, ...]}``, and
  ``unsubscribe`` likewise); for each subscription: ``candle.update`` when its newest candle changed and
  ``candle.close`` when a newer one began (the closed candle, final), each with its indicator values
  (the gateway's ``/api/candles`` fields) and the candle table's ``seq``;
* ``orders`` / ``positions`` — the whole table (as ``/api/orders`` / ``/api/positions``) on connect and whenever
  its version moves;
* ``timeline`` — the newest entries on connect, then every new entry (``/api/timeline``'s fields);
* ``surge`` — the markets firing now on connect (``surge.state``, as ``/api/surge``), then ``surge`` each time a
  market starts firing (procs/market/surge.py, the ``gateway.surge_*`` rule);
* ``stats`` — every second: clients per channel, messages sent, clients dropped, the poll's own time.

Every client may send ``{"type": "ping"}`` (answered ``{"type": "pong"}``); the server pings at the WebSocket level
too (uvicorn's keep-alive). Each client has a bounded queue (``gateway.client_queue`` messages): a client that
falls that far behind — it stopped reading — is dropped with close code :data:`CLOSE_TOO_SLOW`, and neither the
gateway nor the engine ever waits for it. The poll reads only tables whose ``seq``/version moved.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from urllib.parse import urlsplit

import orjson
from fastapi import WebSocket, WebSocketDisconnect

from ..market.surge import SurgeRule
from ..views.gateway_source import ShmGatewaySource, UnknownMarket

log = logging.getLogger("smtm.gateway")

CLOSE_TOO_SLOW = 4008        #: close code for a client whose queue overflowed (it stopped reading)
CHANNELS = ("market", "orders", "positions", "timeline", "surge", "stats")
TIMELINE_ON_CONNECT = 50
MAX_CLOSES = 500             #: most closed candles sent for one key at one look (a long backfill)
MAX_SUBSCRIPTIONS = 64       #: (market, timeframe) pairs one client may follow
MARKET_RE = re.compile(r"^KRW-[A-Z0-9]{1,12}$")


class Client:
    """One WebSocket connection on one channel, with its bounded queue and its market subscriptions."""

    def __init__(self, ws: WebSocket, channel: str, queue_size: int):
        self.ws = ws
        self.channel = channel
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.subs: set[tuple[str, str]] = set()
        self.timeline_next = 0      # index of the next timeline entry this client gets
        self.dropped = False

    def put(self, data: bytes) -> bool:
        """Queue one encoded message; False if the queue is full (the caller drops the client)."""
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            return False


class Hub:
    """Every client by channel, and the poller that feeds them (``poll_s`` apart)."""

    def __init__(self, source: ShmGatewaySource, *, poll_s: float = 0.05, queue_size: int = 256,
                 surge: tuple[str, SurgeRule] | None = None, origins: tuple[str, ...] = ("127.0.0.1", "localhost")):
        self.source = source
        self.origins = {o.strip("[]") for o in origins}
        self.surge_tf, self.surge_rule = surge or (source.base.finest_timeframe, SurgeRule())
        self._firing: dict[str, int] = {}      # market -> start of the last candle announced as firing
        self._surge_seq = -1
        self.poll_s = poll_s
        self.queue_size = queue_size
        self.clients: dict[str, set[Client]] = {c: set() for c in CHANNELS}
        self.sent = Counter()
        self.dropped = 0
        self.poll_ms = 0.0
        self._versions: dict[str, int] = {}
        self._timeline_count = -1
        self._candle_seq: dict[str, int] = {}
        self._last_candle: dict[tuple[str, str], tuple[int, dict]] = {}
        self._stats_at = 0.0
        self.started = time.monotonic()
        self._task: asyncio.Task | None = None
        self.errors = 0

    # -- clients ---------------------------------------------------------------------------------------
    def remove(self, c: Client) -> None:
        self.clients[c.channel].discard(c)

    def _greet(self, c: Client) -> None:
        """What a client gets on connect: the current state of its channel."""
        if c.channel == "orders":
            self._send(c, {"channel": "orders", "type": "orders", **self.source.orders()})
        elif c.channel == "positions":
            self._send(c, {"channel": "positions", "type": "positions", **self.source.positions()})
        elif c.channel == "timeline":
            doc = self.source.timeline(TIMELINE_ON_CONNECT)
            c.timeline_next = max(doc["count"], 0)
            self._send(c, {"channel": "timeline", "type": "timeline", **doc})
        elif c.channel == "surge":
            doc = self.source.surge(self.surge_tf, self.surge_rule)
            self._send(c, {"channel": "surge", "type": "surge.state", **doc,
                           "markets": [m for m in doc["markets"] if m["fired"]]})
        elif c.channel == "stats":
            self._send(c, self.stats())

    def _send(self, c: Client, msg: dict | bytes) -> None:
        """Queue ``msg`` for ``c`` (a dict, or one already encoded: a message for many clients is encoded once)."""
        if c.dropped:
            return
        if not c.put(msg if isinstance(msg, bytes) else orjson.dumps(msg)):
            self._drop(c)

    def _fan_out(self, clients, msg: dict) -> None:
        data = orjson.dumps(msg)
        for c in list(clients):
            self._send(c, data)

    def _drop(self, c: Client) -> None:
        """``c`` fell ``queue_size`` messages behind: close it (without waiting) and forget it."""
        c.dropped = True
        self.dropped += 1
        self.remove(c)

        async def close():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.ws.close(code=CLOSE_TOO_SLOW, reason="too slow: stopped reading"), 1.0)
        asyncio.get_running_loop().create_task(close())

    def stats(self) -> dict:
        return {"channel": "stats", "type": "stats", "clients": {ch: len(cs) for ch, cs in self.clients.items()},
                "messages_sent": dict(self.sent), "dropped": self.dropped, "poll_ms": round(self.poll_ms, 3),
                "uptime_s": round(time.monotonic() - self.started, 1)}

    # -- the poller -----------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                self.poll()
            except Exception as e:   # a read that failed (a writer restarting): counted, tried again next time
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.warning("WebSocket poll failed (%d so far): %r", self.errors, e)
            self.poll_ms = (time.perf_counter() - t0) * 1000
            await asyncio.sleep(self.poll_s)

    def poll(self) -> None:
        """One look at the tables the connected clients want; what changed goes on their queues."""
        src = self.source
        for channel, read in (("orders", src.orders), ("positions", src.positions)):
            if not self.clients[channel]:
                continue
            version = src.version(channel)
            if version != self._versions.get(channel):
                self._versions[channel] = version
                self._fan_out(self.clients[channel], {"channel": channel, "type": channel, **read()})
        if self.clients["timeline"]:
            self._poll_timeline()
        if self.clients["market"]:
            self._poll_market()
        if self.clients["surge"]:
            self._poll_surge()
        now = time.monotonic()
        if self.clients["stats"] and now - self._stats_at >= 1.0:
            self._stats_at = now
            self._fan_out(self.clients["stats"], self.stats())

    def _poll_timeline(self) -> None:
        """New entries for each client from its own cursor (set by its greeting), in one message per look; a
        client more than 1000 behind gets the newest 1000 and ``skipped``."""
        count = self.source.timeline_count()
        if count == self._timeline_count:
            return
        clients = list(self.clients["timeline"])
        behind = min((c.timeline_next for c in clients), default=count)
        if behind >= count:
            self._timeline_count = count
            return
        doc = self.source.timeline(min(count - behind, 1000))
        count = doc["count"]                 # the read's own count: entries are the newest before it
        first = count - len(doc["timeline"])
        for c in clients:
            start = max(c.timeline_next, first)
            if start < count:
                self._send(c, {"channel": "timeline", "type": "timeline.entries", "skipped": start - c.timeline_next,
                               "entries": doc["timeline"][start - first:]})
            c.timeline_next = count
        self._timeline_count = count

    def _poll_surge(self) -> None:
        seq = self.source.candle_seq(self.surge_tf)
        if seq == self._surge_seq:
            return
        self._surge_seq = seq
        doc = self.source.surge(self.surge_tf, self.surge_rule)
        for m in doc["markets"]:
            market = m["market"]
            if not m["fired"] or self._firing.get(market) == m["t"]:
                continue          # not firing, or announced already for this candle (its open one wavers)
            self._firing[market] = m["t"]
            self._fan_out(self.clients["surge"], {"channel": "surge", "type": "surge", "tf": self.surge_tf,
                                                  "seq": doc["seq"], **m})

    def _poll_market(self) -> None:
        wanted: dict[tuple[str, str], list[Client]] = {}
        for c in self.clients["market"]:
            for key in c.subs:
                wanted.setdefault(key, []).append(c)
        for tf in {tf for _, tf in wanted}:
            seq = self.source.candle_seq(tf)
            if seq == self._candle_seq.get(tf):
                continue
            self._candle_seq[tf] = seq
            for (market, t), clients in wanted.items():
                if t == tf:
                    for msg in self._candle_messages(market, tf):
                        self._fan_out(clients, msg)

    def _candle_messages(self, market: str, tf: str) -> list[dict]:
        """``candle.close`` for every candle that was open at the last look (or began since) and is now followed by
        a newer one, oldest first, and ``candle.update`` for the newest if it changed. A key seen for the first
        time gets its newest candle only."""
        last = self._last_candle.get((market, tf))
        try:
            doc = self.source.candles(market, tf, 2)
            if last is not None and doc["candles"] and doc["candles"][0]["t"] > last[0]:
                # more than one candle began since the last look: read back to the one that was open then
                need = min(doc["count"] - last[2] + 1, MAX_CLOSES + 1)
                doc = self.source.candles(market, tf, max(need, 2))
        except (UnknownMarket, ValueError):
            return []
        rows = list(zip(doc["candles"], doc["indicators"], strict=True))
        if not rows:
            return []
        out = []
        if last is not None:
            for closed, ind in rows[:-1]:
                if closed["t"] >= last[0]:
                    out.append({"channel": "market", "type": "candle.close", "market": market, "tf": tf,
                                "seq": doc["seq"], "candle": closed, "indicators": ind})
        newest, ind = rows[-1]
        if last is None or newest != last[1]:
            out.append({"channel": "market", "type": "candle.update", "market": market, "tf": tf,
                        "seq": doc["seq"], "candle": newest, "indicators": ind})
        self._last_candle[(market, tf)] = (newest["t"], newest, doc["count"])
        return out

    # -- a connection ---------------------------------------------------------------------------------
    async def serve(self, ws: WebSocket, channel: str) -> None:
        """One client's life: accept, greet, then its sender and its reader until either ends."""
        if self._task is None or self._task.done():   # the poller runs on the server's loop from the first client on
            self._task = asyncio.get_running_loop().create_task(self.run())
        origin = ws.headers.get("origin")
        if origin is not None and (urlsplit(origin).hostname or "") not in self.origins:
            await ws.close(code=1008)    # before the handshake: a page of another site may not read the engine
            return
        await ws.accept()
        c = Client(ws, channel, self.queue_size)
        sender = asyncio.create_task(self._sender(c))
        try:
            self._greet(c)
            self.clients[channel].add(c)
            while not c.dropped:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                text = frame.get("text")
                try:
                    msg = orjson.loads(text) if text is not None else None
                except orjson.JSONDecodeError:
                    msg = None
                if not isinstance(msg, dict):
                    self._send(c, {"channel": channel, "type": "error", "error": "messages are JSON objects (text)"})
                    continue
                self._handle(c, msg)
        except (WebSocketDisconnect, RuntimeError):
            pass
        except Exception as e:     # a message this code did not foresee: the client goes, the gateway stays
            log.warning("WebSocket client on /ws/%s closed: %r", channel, e)
        finally:
            self.remove(c)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _sender(self, c: Client) -> None:
        while True:
            data = await c.queue.get()
            await c.ws.send_text(data.decode())
            self.sent[c.channel] += 1

    def _handle(self, c: Client, msg) -> None:
        if not isinstance(msg, dict):
            self._send(c, {"channel": c.channel, "type": "error", "error": "messages are JSON objects"})
        elif msg.get("type") == "ping":
            self._send(c, {"channel": c.channel, "type": "pong", "ts": time.time()})
        elif c.channel == "market" and ("subscribe" in msg or "unsubscribe" in msg):
            self._subscribe(c, msg)
        else:
            self._send(c, {"channel": c.channel, "type": "error",
                           "error": "unknown message: send {\"type\": \"ping\"}"
                                    + (" or {\"subscribe\": [{\"market\", \"tf\"}]}" if c.channel == "market" else "")})

    def _greet_market(self, c: Client, market: str, tf: str) -> None:
        """A new subscription's newest candle, to this client alone (the others' state is left as it is)."""
        try:
            doc = self.source.candles(market, tf, 1)
        except (UnknownMarket, ValueError) as e:
            self._send(c, {"channel": "market", "type": "error", "error": str(e)})
            return
        if doc["candles"]:
            self._send(c, {"channel": "market", "type": "candle.update", "market": market, "tf": tf, "seq": doc["seq"],
                           "candle": doc["candles"][-1], "indicators": doc["indicators"][-1]})

    def _subscribe(self, c: Client, msg: dict) -> None:
        for verb in ("subscribe", "unsubscribe"):
            items = msg.get(verb) or []
            if not isinstance(items, list):
                self._send(c, {"channel": "market", "type": "error", "error": f"{verb}: a list of {{market, tf}}"})
                continue
            for s in items:
                market, tf = (s.get("market"), s.get("tf")) if isinstance(s, dict) else (None, None)
                if not isinstance(market, str) or not MARKET_RE.match(market) or \
                        tf not in self.source.base.shm.timeframes:
                    self._send(c, {"channel": "market", "type": "error",
                                   "error": f"{verb}: {s!r} needs a market and a tf of "
                                            f"{', '.join(self.source.base.shm.timeframes)}"})
                    continue
                if verb == "subscribe":
                    if (market, tf) not in c.subs and len(c.subs) >= MAX_SUBSCRIPTIONS:
                        self._send(c, {"channel": "market", "type": "error",
                                       "error": f"at most {MAX_SUBSCRIPTIONS} subscriptions a client"})
                        continue
                    c.subs.add((market, tf))
                    self._greet_market(c, market, tf)
                else:
                    c.subs.discard((market, tf))
        self._send(c, {"channel": "market", "type": "subscribed",
                       "subscriptions": [{"market": m, "tf": t} for m, t in sorted(c.subs)]})
