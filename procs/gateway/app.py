"""The gateway's FastAPI application: REST over the shared-memory tables (read-only).

Routes (JSON; every answer from one consistent read of the table it names, with that table's ``seq``/``version``):

=========================  ===========================================================================
``GET /api/health``        every program's status row and whether all run (``ok``)
``GET /api/markets``       the symbol manager's table: rank, 24 h value, in the universe, tradable
``GET /api/candles``       ``?market=KRW-BTC&tf=30m&count=200``: candles oldest first, indicators aligned
``GET /api/engine``        the trader's row: mode, risk flags, the account
``GET /api/pnl``           the account figures alone (equity, cash, realized, unrealized, daily, fees, drawdown)
``GET /api/positions``     the open positions
``GET /api/orders``        the open orders and the most recent closed ones, newest first
``GET /api/timeline``      ``?n=50``: the trader's timeline (the "why" of every decision), oldest first
``GET /``                  the web dashboard (``static/``: lightweight-charts, live over the channels below)
``GET /api/surge``         every market judged by the surge rule (procs/market/surge.py) on its newest candle
``GET /api/clients``       the WebSocket channels' clients, messages sent, clients dropped
``WS /ws/<channel>``       ``market``, ``orders``, ``positions``, ``timeline``, ``surge``, ``stats``: :mod:`.channels`
=========================  ===========================================================================

The P&L by day, market or exit reason (the trader's PNL.GET) is computed from the ledger, which the gateway never
reads: ``/api/pnl`` gives what the trader publishes in shared memory.

``GET /api/snapshot?market=&tf=&count=`` is the trader's SNAPSHOT.GET document, asked of its command socket: an
answer is cached a second, one question is asked at a time and at most two a second whatever they are (429 with
``Retry-After`` otherwise), so clients cannot load the engine with it.

**Commands** (``POST /api/commands/<TYPE>``, body ``{"payload": {...}, "symbol": "KRW-…"?}``, every command of the
trader's protocol but EVENT.SUBSCRIBE) are **off** unless the gateway was started with a token in its environment
(``SMTM_GATEWAY_TOKEN``, never in a file, never logged): without one each answers 403; with one a request needs
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise) and is proxied to the trader's socket,
where the engine's rules apply unchanged (a refusal comes back as 409 with the engine's error; the audit trail
names the gateway and the client's address). 503 when the trader cannot be reached.

Errors: 400 for a timeframe the instance does not keep, 404 for a market without a candle row, 422 for a
malformed parameter (FastAPI's validation: a market code that is not ``KRW-…``, a count out of range).
Route handlers are plain functions: FastAPI runs them in its thread pool, so a read never blocks the event loop.
"""
# no `from __future__ import annotations` here: FastAPI evaluates the route signatures, whose bounds (max_candles)
# are closure variables
import hmac
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from shm.seqlock import SeqlockTimeout

from ..market.surge import SurgeRule
from ..trading.client import TraderClient, TraderUnavailable
from ..trading.protocol import COMMANDS
from ..views.gateway_source import ShmGatewaySource, UnknownMarket
from .channels import CHANNELS, Hub

#: the commands the gateway proxies (a subscription is a stream: the WebSocket channels carry the events)
COMMAND_TYPES = tuple(c for c in COMMANDS if c != "EVENT.SUBSCRIBE")
SNAPSHOT_TTL_S = 1.0
#: the dashboard: index.html, its script and style, and the vendored charting library (with its licence)
STATIC = Path(__file__).parent / "static"


class CommandBody(BaseModel):
    """The body of ``POST /api/commands/<TYPE>``: the command's ``payload`` and, for the commands that take one,
    its ``symbol`` (a market)."""
    model_config = ConfigDict(extra="forbid")
    payload: dict[str, Any] = {}
    symbol: str | None = None


class _Snapshots:
    """SNAPSHOT.GET answers cached ``SNAPSHOT_TTL_S`` per question, one question to the trader at a time."""

    def __init__(self, socket_path: Path | None):
        self.path = socket_path
        self.lock = threading.Lock()
        self.cache: dict[tuple, tuple[float, dict]] = {}
        self.asked = -1e9     # when the trader was last asked (monotonic s)

    def get(self, market: str | None, tf: str | None, count: int) -> dict:
        key = (market, tf, count)
        if not self.lock.acquire(timeout=SNAPSHOT_TTL_S):   # one question at a time; nobody queues for long
            raise HTTPException(status_code=429, detail="the trader is being asked already: try again in a second",
                                headers={"Retry-After": "1"})
        try:
            hit = self.cache.get(key)
            now = time.monotonic()
            if hit is not None and now - hit[0] < SNAPSHOT_TTL_S:
                return hit[1]
            if now - self.asked < SNAPSHOT_TTL_S / 2:      # at most two questions a second, whatever they are
                raise HTTPException(status_code=429, detail="the trader was asked just now: try again in a second",
                                    headers={"Retry-After": "1"})
            if self.path is None:
                raise TraderUnavailable("no trader socket configured")
            self.asked = now
            payload = {"count": count, **({"tf": tf} if tf else {})}
            with TraderClient(self.path, timeout_s=10.0, run_id="gateway") as c:
                ack = c.request("SNAPSHOT.GET", payload, market)
            if not ack.get("ok"):
                raise HTTPException(status_code=400, detail=ack.get("error"))
            if len(self.cache) > 256:
                self.cache.clear()
            self.cache[key] = (time.monotonic(), ack["payload"])
            return ack["payload"]
        finally:
            self.lock.release()

MARKET_PATTERN = r"^KRW-[A-Z0-9]{1,12}$"
#: the names a request may give this machine by (Host header) and the origins a WebSocket may come from
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def make_app(source: ShmGatewaySource, *, max_candles: int = 2000, title: str = "SMTM-NG gateway",
             trader_socket: Path | None = None, token: str | None = None, client_queue: int = 256,
             poll_s: float = 0.05, surge: tuple[str, SurgeRule] | None = None,
             hosts: tuple[str, ...] = LOCAL_HOSTS) -> FastAPI:
    """The application over ``source``; ``max_candles`` bounds ``count`` of ``/api/candles``; ``trader_socket``:
    the trader's command socket (snapshot and commands); ``token``: commands are accepted with it, refused
    (403) without one; ``client_queue`` and ``poll_s``: the WebSocket channels' (:mod:`.channels`); ``surge``: the
    timeframe and rule of the surge alerts (default: the finest timeframe, :class:`SurgeRule`'s defaults)."""
    snapshots = _Snapshots(trader_socket)
    hub = Hub(source, poll_s=poll_s, queue_size=client_queue, surge=surge, origins=hosts)
    app = FastAPI(title=title, description="Read-only access to a running SMTM-NG instance (shared memory).",
                  version="1", docs_url=None, redoc_url=None)

    @app.get("/docs", include_in_schema=False)
    def docs():
        # Swagger UI from the gateway itself (vendored): the API's page works without network
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} — API",
                                   swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png")
    # a request must name this machine (or the configured host): a web page elsewhere cannot reach the API through
    # DNS rebinding, and (Hub.serve) a WebSocket opened by a page of another origin is refused
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    default_tf = source.base.shm.timeframes[0]

    @app.exception_handler(SeqlockTimeout)
    async def busy(request: Request, exc: SeqlockTimeout) -> JSONResponse:
        # a writer held the row through every retry (a storm on two cores, or a writer killed mid-write)
        return JSONResponse(status_code=503, content={"detail": f"shared memory busy: {exc}"},
                            headers={"Retry-After": "1"})

    @app.get("/api/health", summary="Every program's status row")
    def health() -> dict:
        return source.health()

    @app.get("/api/markets", summary="The symbol manager's ranking")
    def markets() -> dict:
        return source.markets()

    @app.get("/api/candles", summary="Candles with aligned indicator values")
    def candles(market: Annotated[str, Query(pattern=MARKET_PATTERN, description="e.g. KRW-BTC")],
                tf: Annotated[str, Query(description="a timeframe of shm.timeframes")] = default_tf,
                count: Annotated[int, Query(ge=1, le=max_candles)] = 200) -> dict:
        try:
            return source.candles(market, tf, count)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        except UnknownMarket as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    @app.get("/api/engine", summary="The trader's state: mode, risk flags, the account")
    def engine() -> dict:
        return source.engine()

    @app.get("/api/pnl", summary="The account: equity, cash, realized and unrealized P&L (KRW)")
    def pnl() -> dict:
        e = source.engine()
        keys = ("available", "version", "mode", "cash", "equity", "realized", "unrealized", "daily_pnl", "fees",
                "hwm", "drawdown_pct", "market_ms")
        return {k: e[k] for k in keys if k in e}

    @app.get("/api/positions", summary="The open positions")
    def positions() -> dict:
        return source.positions()

    @app.get("/api/orders", summary="Open and recent orders, newest first")
    def orders() -> dict:
        return source.orders()

    @app.get("/api/timeline", summary="The trader's timeline, oldest first")
    def timeline(n: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
        return source.timeline(n)

    @app.get("/api/snapshot", summary="The trader's SNAPSHOT.GET document (cached 1 s)")
    def snapshot(market: Annotated[str | None, Query(pattern=MARKET_PATTERN)] = None, tf: str | None = None,
                 count: Annotated[int, Query(ge=1, le=max_candles)] = 200) -> dict:
        try:
            return snapshots.get(market, tf, count)
        except TraderUnavailable as e:
            raise HTTPException(status_code=503, detail=str(e)) from None

    @app.post("/api/commands/{name}", summary="A command to the trader (needs the gateway's token)",
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": CommandBody.model_json_schema()}}}})
    async def command(name: str, request: Request) -> Any:
        # the token first, the body after: nothing about the request is looked at before it is authorized
        if token is None:
            raise HTTPException(status_code=403, detail="commands through the gateway are off: the gateway runs "
                                                        "without SMTM_GATEWAY_TOKEN")
        authorization = request.headers.get("authorization", "")
        given = authorization[7:] if authorization.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="a command needs Authorization: Bearer <the gateway's token>",
                                headers={"WWW-Authenticate": "Bearer"})
        if name not in COMMAND_TYPES:
            raise HTTPException(status_code=404, detail=f"{name!r} is not a command of the trader "
                                                        f"({', '.join(COMMAND_TYPES)})")
        raw = await request.body()
        try:
            body = CommandBody.model_validate_json(raw) if raw.strip() else CommandBody()
        except ValidationError as e:
            raise HTTPException(status_code=422, detail=e.errors(include_url=False, include_input=False)) from None
        if trader_socket is None:
            raise HTTPException(status_code=503, detail="no trader socket configured")
        peer = f"{request.client.host}:{request.client.port}" if request.client else "?"

        def send() -> dict:
            with TraderClient(trader_socket, timeout_s=10.0, run_id=f"gateway {peer}") as c:
                return c.request(name, body.payload, body.symbol)
        try:
            ack = await run_in_threadpool(send)
        except TraderUnavailable as e:
            raise HTTPException(status_code=503, detail=str(e)) from None
        return ack if ack.get("ok") else JSONResponse(status_code=409, content=ack)

    for channel in CHANNELS:
        async def endpoint(ws: WebSocket, channel: str = channel) -> None:
            await hub.serve(ws, channel)
        app.add_api_websocket_route(f"/ws/{channel}", endpoint, name=f"ws_{channel}")

    @app.get("/api/surge", summary="Every market judged by the surge rule on its newest candle")
    def surge_now() -> dict:
        return source.surge(hub.surge_tf, hub.surge_rule)

    @app.get("/api/clients", summary="WebSocket clients per channel, messages sent, clients dropped")
    def clients() -> dict:
        return hub.stats()

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.hub = hub
    return app
