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
=========================  ===========================================================================

The P&L by day, market or exit reason (the trader's PNL.GET) is computed from the ledger, which the gateway never
reads: ``/api/pnl`` gives what the trader publishes in shared memory.

Errors: 400 for a timeframe the instance does not keep, 404 for a market without a candle row, 422 for a
malformed parameter (FastAPI's validation: a market code that is not ``KRW-…``, a count out of range).
Route handlers are plain functions: FastAPI runs them in its thread pool, so a read never blocks the event loop.
"""
# no `from __future__ import annotations` here: FastAPI evaluates the route signatures, whose bounds (max_candles)
# are closure variables
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query

from ..views.gateway_source import ShmGatewaySource, UnknownMarket

MARKET_PATTERN = r"^KRW-[A-Z0-9]{1,12}$"


def make_app(source: ShmGatewaySource, *, max_candles: int = 2000, title: str = "SMTM-NG gateway") -> FastAPI:
    """The application over ``source``; ``max_candles`` bounds ``count`` of ``/api/candles``."""
    app = FastAPI(title=title, description="Read-only access to a running SMTM-NG instance (shared memory).",
                  version="1")
    default_tf = source.base.shm.timeframes[0]

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

    return app
