"""The replay exchange: an Upbit-compatible server on loopback that replays real data.

One aiohttp application on one port serves

* ``GET /websocket/v1`` — Upbit's public WebSocket (:mod:`.protocol`): subscriptions replace each
  other, the text ``PING`` is answered ``{"status":"UP"}``, ``LIST_SUBSCRIPTIONS`` is answered, a
  connection idle for 120 s in both directions is closed, as Upbit does. Types: ``trade``,
  ``ticker`` (from a recording) and ``candle.30m`` / ``candle.60m`` / ``candle.240m``. The
  events come from :mod:`.fanout` (the replay clock).
* Upbit's REST quotation API (:mod:`.rest`) and its exchange API (:mod:`.private`: signed requests,
  the account and its orders, matched on the replayed trades by :mod:`.accounts`).
* ``GET /replay/status`` — replay position, progress and counters (JSON); ``POST
  /replay/control`` — ``{"speed": x}``, ``{"rate": trades_per_s}``, ``{"pause": true}``, ``{"resume": true}``;
  ``GET``/``POST
  /faults`` — fault injection (:mod:`.faults`).

Trades are synthesized from the real 30-minute candles (:mod:`procs.market.tape`) or read from a recording
(:mod:`.recording`). Not served (no order book in the data): ``best_ask_*`` / ``best_bid_*``
trade fields, orderbook streams. The process around it is :mod:`procs.replay.__main__`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiohttp import WSMsgType, web

from ..market.tape import ReplayTape
from ..trading.fills import FillModel
from ..upbit import fields
from .accounts import ReplayAccount
from .fanout import Replayer
from .faults import FaultError, FaultInjector
from .private import PrivateApi
from .protocol import Client, SubscriptionError, candle_message, parse_request, utc_str
from .rest import RestApi

log = logging.getLogger("smtm.exchange")

IDLE_TIMEOUT_S = 120.0


class ReplayExchange:
    """The application: the replayer, the REST API, the WebSocket and the admin routes."""

    def __init__(self, tape: ReplayTape, market_all: list[dict], speed: float, rest_per_second: int = 10, *,
                 account_krw: float = 10_000_000.0, keys: dict[str, tuple[str, tuple[str, ...]]] | None = None,
                 fill_model: FillModel | None = None):
        self.tape = tape
        self.faults = FaultInjector()
        self.replayer = Replayer(tape, speed, self.faults)
        self.rest = RestApi(self.replayer, market_all, self.faults, rest_per_second)
        self.account = ReplayAccount(tape.markets, account_krw, fill_model or FillModel(),
                                     lambda: max(self.replayer.now_ms, tape.start_ms))
        self.private = PrivateApi(self.account, keys or {}, self.faults)
        self.replayer.on_trade = self.account.on_trade
        self.subscriptions_received = 0

    # -- WebSocket -------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        if self.faults.refusing():
            return web.json_response({"error": {"name": "unavailable", "message": "outage (injected)"}}, status=503)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 16)
        await ws.prepare(request)
        cl = Client(ws, request.remote or "?", request.transport)
        self.replayer.clients.add(cl)
        watchdog = asyncio.create_task(self._idle_watchdog(cl))
        try:
            async for msg in ws:
                cl.last_activity = time.monotonic()
                if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                    data = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                    await self._on_text(cl, data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            watchdog.cancel()
            self.replayer.clients.discard(cl)
            self.replayer.frames_gone += cl.sent
        return ws

    async def _idle_watchdog(self, cl: Client) -> None:
        while not cl.ws.closed:
            await asyncio.sleep(1.0)
            if time.monotonic() - cl.last_activity > IDLE_TIMEOUT_S:
                log.info("closing idle connection %s", cl.peer)
                await cl.ws.close(code=1000, message=b"idle timeout")

    async def _on_text(self, cl: Client, data: str) -> None:
        if data.strip() == "PING":
            if not self.faults.stalled():  # a stalled exchange says nothing at all
                await cl.ws.send_bytes(b'{"status":"UP"}')
            return
        try:
            parsed = parse_request(json.loads(data))
        except json.JSONDecodeError:
            await cl.send_error("WRONG_FORMAT", "request is not JSON")
            return
        except SubscriptionError as e:
            await cl.send_error(e.name, str(e))
            return
        self.subscriptions_received += 1
        if parsed is None:
            result = [{"type": t, "codes": sorted(c)} for t, c in cl.types.items()]
            await cl.send_obj({"method": "LIST_SUBSCRIPTIONS", "result": result, "ticket": cl.ticket},
                              {"method": "mthd", "result": "rslt", "ticket": "tckt"})
            return
        cl.ticket, cl.types, cl.format, realtime = parsed  # a new request replaces the old one
        self.replayer.subscription_log.append({"at": time.time(), "peer": cl.peer, "format": cl.format,
                                      "types": {t: sorted(c) for t, c in cl.types.items()}})
        log.info("subscription from %s: %s (%s)", cl.peer, {t: len(c) for t, c in cl.types.items()}, cl.format)
        await self._send_snapshots(cl, realtime)
        self.replayer.started.set()

    async def _send_snapshots(self, cl: Client, realtime: dict[str, bool]) -> None:
        """Types subscribed without ``is_only_realtime`` get the current state first (SNAPSHOT)."""
        r = self.replayer
        for ty, codes in cl.types.items():
            if realtime.get(ty):
                continue
            for code in sorted(codes):
                if code not in self.tape.markets:
                    continue
                mi = self.tape.markets.index(code)
                if ty == "trade" and r.last_trade[mi] is not None:
                    await cl.send_obj({**r.last_trade[mi], "stream_type": "SNAPSHOT"}, fields.TRADE)
                elif ty.startswith("candle.") and r.partial[int(ty[7:-1])][mi] is not None:
                    await cl.send_obj(candle_message(int(ty[7:-1]), code, r.partial[int(ty[7:-1])][mi], "SNAPSHOT"),
                                      fields.CANDLE)
    async def replay_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.progress())

    def _where(self) -> tuple[float, str]:
        """(percent of the tape sent, replay time as ISO-8601 UTC)."""
        r, n = self.replayer, len(self.tape.clock_ms)
        return 100.0 * r.position / n if n else 100.0, utc_str(max(r.now_ms, self.tape.start_ms) // 1000) + "Z"

    def progress(self) -> dict:
        r, rest = self.replayer, self.rest
        percent, replay_time = self._where()
        return {"position": r.position, "trades": len(self.tape.trades), "events": len(self.tape.clock_ms),
                "percent": percent, "replay_time": replay_time,
                "speed": r.speed, "rate": r.rate, "paused": r.paused, "started": r.started.is_set(),
                "finished": r.finished, "faults": self.faults.state(),
                "rest_status_counts": {str(k): v for k, v in rest.status_counts.items()},
                "rest_limit_per_s": rest.limits.per_second,
                "rest_max_sent_per_s": {g: rest.limits.max_in_any_second(g, sent=True)
                                        for g in sorted({g for _, g in rest.limits.sent_log})},
                "subscriptions": list(r.subscription_log)[-5:],
                "clients": len(r.clients), "clients_dropped": r.clients_dropped,
                "subscriptions_received": self.subscriptions_received,
                "messages_sent": r.messages_sent, "frames_sent": r.frames_sent, "rest_requests": rest.requests,
                "exchange_requests": self.private.requests, "orders_placed": self.private.placed,
                "fills": self.account.fills, "markets": self.tape.markets}

    def summary(self) -> str:
        """One line for the status row (every heartbeat: only what it shows, not the whole progress,
        whose REST statistics scan the request log)."""
        r = self.replayer
        percent, replay_time = self._where()
        pace = f"{r.rate:,.0f}/s" if r.rate > 0 else f"x{r.speed:g}"
        return (f"replay {replay_time} {percent:.1f}% {pace}" + (" paused" if r.paused else "")
                + (" finished" if r.finished else ""))

    async def replay_control(self, request: web.Request) -> web.Response:
        try:
            self.replayer.control(await request.json())
            return web.json_response(self.progress())
        except (ValueError, json.JSONDecodeError) as e:
            return web.json_response({"error": {"name": "invalid_control", "message": str(e)}}, status=400)

    async def faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.state())

    async def faults_post(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
            state = self.faults.apply(req if isinstance(req, dict) else {})
        except (FaultError, json.JSONDecodeError) as e:
            return web.json_response({"error": {"name": "invalid_fault", "message": str(e)}}, status=400)
        log.warning("fault injected: %s", req)
        if req.get("type") == "drop":
            for cl in list(self.replayer.clients):
                if cl.transport is not None:
                    cl.transport.abort()  # no close frame: the client sees a dead socket
                self.replayer.clients.discard(cl)
        return web.json_response(state)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/websocket/v1", self.ws_handler)
        self.rest.routes(app)
        self.private.routes(app)
        app.router.add_get("/replay/status", self.replay_status)
        app.router.add_post("/replay/control", self.replay_control)
        app.router.add_get("/faults", self.faults_get)
        app.router.add_post("/faults", self.faults_post)
        return app


async def serve(exchange: ReplayExchange, host: str, port: int, stop: asyncio.Event,
                on_listening: Callable[[str, int], None] = lambda host, port: None) -> None:
    """Listen on ``host:port`` (0: any free port), call ``on_listening(host, port)`` with the port
    actually bound, and serve until ``stop`` is set. Raises whatever killed the replay loop (the
    process then fails loudly rather than serve a frozen clock)."""
    runner = web.AppRunner(exchange.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("replay exchange on http://%s:%d (%d markets, %d trades, speed %g)", host, bound,
             len(exchange.tape.markets), len(exchange.tape.trades), exchange.replayer.speed)
    on_listening(host, bound)
    replay = asyncio.create_task(exchange.replayer.run(), name="replay")
    stopped = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({replay, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if replay in done:
            replay.result()          # raises if the replay loop died
            await stopped            # finished: keep serving REST until stopped
    finally:
        for t in (replay, stopped):
            t.cancel()
        await runner.cleanup()
