"""The replay exchange's REST side (Upbit's quotation API, PROTOCOL.md §2): ``market/all``,
minute candles and tickers computed from what has been replayed so far, behind Upbit's per-group
rate limit (``Remaining-Req``; 429 over it, 418 for persistent offenders) and the injected faults.

* ``GET /v1/market/all`` (``is_details``) — the recorded real response.
* ``GET /v1/candles/minutes/{unit}`` (unit 30, 60, 240; ``market``, ``count`` 1–200, ``to``
  exclusive ISO-8601 end, naive = UTC) — newest first, only candles that have started by the
  replay clock (the current one partial), as Upbit pages them.
* ``GET /v1/ticker?markets=..`` — last price, day open/high/low and change vs the previous UTC
  day's close, ``acc_trade_price``/``volume`` since 00:00 UTC and ``acc_trade_price_24h``/
  ``volume_24h`` over the trailing 24 h of replay time (no 52-week fields: the data spans three
  months).
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import numpy as np
from aiohttp import web

from ..market.tape import rollup
from .fanout import Replayer
from .faults import FaultInjector, RestLimits, limit_answer
from .protocol import CANDLE_UNITS, KST, utc_str


class RestApi:
    """REST handlers over a :class:`~procs.replay.fanout.Replayer`'s state."""

    def __init__(self, replayer: Replayer, market_all: list[dict], faults: FaultInjector, rest_per_second: int):
        self.replayer = replayer
        self.tape = tape = replayer.tape
        self.market_all_doc = market_all
        self.faults = faults
        self.limits = RestLimits(per_second=rest_per_second)
        self.requests = 0
        self.status_counts: dict[int, int] = {}
        self._rollups = {u: {m: rollup(c, u * 60) for m, c in tape.candles.items()} for u in CANDLE_UNITS}
        # per market: trade times and prefix sums of value/volume, for REST ticker windows
        self._tick_index = {}
        for mi, m in enumerate(tape.markets):
            t = tape.trades[tape.trades["market"] == mi]
            t = t[np.argsort(t["ts"], kind="stable")]
            self._tick_index[m] = (t["ts"], np.r_[0.0, np.cumsum(t["price"] * t["volume"])],
                                   np.r_[0.0, np.cumsum(t["volume"])], t["price"], t["volume"])

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/market/all", self.market_all)
        app.router.add_get("/v1/candles/minutes/{unit}", self.candles_minutes)
        app.router.add_get("/v1/ticker", self.ticker)

    async def _admit(self, group: str) -> tuple[str, web.Response | None]:
        """Account a REST request of ``group``: ``(Remaining-Req header, error response or None)``.

        Applies injected faults first (429 / 418 / delay), then Upbit's per-group limit."""
        self.requests += 1
        fault = self.faults.rest_fault()
        if fault is not None and fault[0] == 0:
            await asyncio.sleep(fault[1])
            fault = None
        if fault is not None:
            status, left = fault[0], 0
        else:
            status, left, _ = self.limits.check(group)
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        blocked_s = max(self.limits.blocked_until, self.faults.rest_418_until) - time.monotonic()
        rem, err, retry_after = limit_answer(group, status, left, blocked_s)
        if err is None:
            return rem, None
        resp = self._error(*err, rem)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return rem, resp

    @staticmethod
    def _error(status: int, name, message: str, remaining: str) -> web.Response:
        return web.json_response({"error": {"name": name, "message": message}}, status=status,
                                 headers={"Remaining-Req": remaining})

    async def market_all(self, request: web.Request) -> web.Response:
        rem, err = await self._admit("market")
        if err is not None:
            return err
        details = request.query.get("is_details", request.query.get("isDetails", "false")).lower() == "true"
        body = self.market_all_doc if details else [{k: v for k, v in m.items() if k != "market_event"}
                                                 for m in self.market_all_doc]
        return web.json_response(body, headers={"Remaining-Req": rem})

    async def candles_minutes(self, request: web.Request) -> web.Response:
        rem, err = await self._admit("candle")
        if err is not None:
            return err
        try:
            unit = int(request.match_info["unit"])
        except ValueError:
            return self._error(400, "invalid_parameter", "unit must be a number", rem)
        if unit not in (1, 3, 5, 10, 15, 30, 60, 240):
            return self._error(400, "invalid_parameter", f"unit {unit} is not an Upbit minute unit", rem)
        if unit not in CANDLE_UNITS:
            return self._error(400, "invalid_parameter",
                               f"unit {unit} cannot be built from the replay's 30-minute data; use 30, 60 or 240", rem)
        market = request.query.get("market")
        if not market:
            return self._error(400, "validation_error", "market is required", rem)
        if market not in self.tape.candles:
            return self._error(404, 404, "Code not found", rem)
        try:
            count = int(request.query.get("count", "1"))
        except ValueError:
            return self._error(400, "validation_error", "count must be an integer", rem)
        if not 1 <= count <= 200:
            return self._error(400, "validation_error", "count must be between 1 and 200", rem)
        to_s = None
        if "to" in request.query:
            try:
                to = datetime.fromisoformat(request.query["to"].replace("Z", "+00:00").replace(" ", "T"))
            except ValueError:
                return self._error(400, "validation_error", "to must be ISO-8601 (yyyy-MM-ddTHH:mm:ss)", rem)
            if to.tzinfo is None:
                to = to.replace(tzinfo=UTC)
            to_s = int(to.timestamp())
        rows = self._candles_upto(market, unit, to_s, count)
        body = [{"market": market, "candle_date_time_utc": utc_str(int(r[0])),
                 "candle_date_time_kst": utc_str(int(r[0]), KST), "opening_price": r[1], "high_price": r[2],
                 "low_price": r[3], "trade_price": r[4], "timestamp": int(r[7]),
                 "candle_acc_trade_price": r[6], "candle_acc_trade_volume": r[5], "unit": unit} for r in rows]
        return web.json_response(body, headers={"Remaining-Req": rem})

    def _candles_upto(self, market: str, unit: int, to_s: int | None, count: int) -> list[tuple]:
        """Newest first, at most ``count``: candles complete by the replay clock, then the
        open one (partial, from the trades sent so far); only starts before ``to_s``."""
        u_s = unit * 60
        hist = self._rollups[unit][market]
        now_ms = self.replayer.now_ms
        complete = hist[(hist["t"] + u_s) * 1000 <= now_ms]
        if to_s is not None:
            complete = complete[complete["t"] < to_s]
        rows = [tuple(r) for r in complete[-count:]]
        p = self.replayer.partial[unit][self.tape.markets.index(market)]
        if (p is not None and (p[0] + u_s) * 1000 > now_ms and (to_s is None or p[0] < to_s)
                and (not rows or rows[-1][0] < p[0])):
            rows.append(tuple(p))
        return list(reversed(rows[-count:]))

    async def ticker(self, request: web.Request) -> web.Response:
        """``GET /v1/ticker?markets=A,B``: Upbit's ticker fields computed from the trades replayed
        so far; ``acc_*_24h`` over the trailing 24 h of replay time, ``acc_*`` since 00:00 UTC."""
        rem, err = await self._admit("ticker")
        if err is not None:
            return err
        codes = [c for c in request.query.get("markets", "").split(",") if c]
        if not codes:
            return self._error(400, "validation_error", "markets is required", rem)
        unknown = [c for c in codes if c not in self._tick_index]
        if unknown:
            return self._error(404, 404, f"Code not found: {','.join(unknown)}", rem)
        body = [t for t in (self.ticker_of(c) for c in codes) if t is not None]
        return web.json_response(body, headers={"Remaining-Req": rem})

    def ticker_of(self, code: str) -> dict | None:
        """Ticker of ``code`` as of the replay clock, or None before its first trade."""
        ts, cum_val, cum_vol, price, vol = self._tick_index[code]
        now = self.replayer.now_ms
        hi = int(np.searchsorted(ts, now, side="right"))
        if hi == 0:
            return None
        day0 = now // 86_400_000 * 86_400_000
        d0 = int(np.searchsorted(ts, day0, side="left"))
        w0 = int(np.searchsorted(ts, now - 86_400_000, side="right"))
        last = float(price[hi - 1])
        prev_close = float(price[d0 - 1]) if d0 > 0 else float(price[0])
        day_prices = price[d0:hi] if hi > d0 else price[hi - 1:hi]
        dt = datetime.fromtimestamp(int(ts[hi - 1]) / 1000, UTC)
        kst = dt.astimezone(KST)
        change = last - prev_close
        return {"market": code, "trade_date": dt.strftime("%Y%m%d"), "trade_time": dt.strftime("%H%M%S"),
                "trade_date_kst": kst.strftime("%Y%m%d"), "trade_time_kst": kst.strftime("%H%M%S"),
                "trade_timestamp": int(ts[hi - 1]), "opening_price": float(day_prices[0]),
                "high_price": float(day_prices.max()), "low_price": float(day_prices.min()), "trade_price": last,
                "prev_closing_price": prev_close, "change": "RISE" if change > 0 else "FALL" if change < 0 else "EVEN",
                "change_price": abs(change), "change_rate": abs(change) / prev_close,
                "signed_change_price": change, "signed_change_rate": change / prev_close,
                "trade_volume": float(vol[hi - 1]),
                "acc_trade_price": float(cum_val[hi] - cum_val[d0]),
                "acc_trade_price_24h": float(cum_val[hi] - cum_val[w0]),
                "acc_trade_volume": float(cum_vol[hi] - cum_vol[d0]),
                "acc_trade_volume_24h": float(cum_vol[hi] - cum_vol[w0]),
                "timestamp": int(time.time() * 1000)}
