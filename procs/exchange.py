"""The replay exchange: an Upbit-compatible server on loopback that replays real data.

Serves, on one port (aiohttp):

* ``GET /websocket/v1`` — Upbit's public WebSocket. A text message holding a JSON array
  ``[{"ticket":..}, {"type":"trade","codes":[..]}, .., {"format":"DEFAULT|SIMPLE|JSON_LIST|SIMPLE_LIST"}]``
  **replaces** the connection's subscription; data frames are binary frames of UTF-8
  JSON; the text ``PING`` is answered ``{"status":"UP"}``; ``LIST_SUBSCRIPTIONS`` is
  answered; errors come back as ``{"error":{"name":..,"message":..}}`` (NO_TICKET,
  NO_TYPE, NO_CODES, WRONG_FORMAT, INVALID_PARAM). A connection idle for 120 s in both
  directions is closed, as Upbit does. Types served: ``trade``, ``ticker`` (from a recording) and ``candle.30m`` /
  ``candle.60m`` / ``candle.240m`` (units the 30-minute data can build exactly).
* ``GET /v1/market/all`` (``is_details``) — the recorded real response.
* ``GET /v1/ticker?markets=..`` — computed from the trades replayed so far: last price, day
  open/high/low and change vs the previous UTC day's close, ``acc_trade_price``/``volume``
  since 00:00 UTC and ``acc_trade_price_24h``/``volume_24h`` over the trailing 24 h of replay
  time (no 52-week fields: the data spans three months).
* ``GET /v1/candles/minutes/{unit}`` (unit 30, 60, 240; ``market``, ``count`` 1–200,
  ``to`` exclusive ISO-8601 end, naive = UTC) — newest first, only candles that have
  started by the replay clock (the current one partial), as Upbit pages them.
  Responses carry ``Remaining-Req: group=..; min=..; sec=..``.
* ``GET /replay/status`` — replay position, progress and counters (JSON);
  ``POST /replay/control`` — ``{"speed": x}``, ``{"pause": true}``, ``{"resume": true}``;
  ``GET``/``POST /faults`` — fault injection (:mod:`procs.faults`). REST follows Upbit's
  per-group limit (``exchange.rest_per_second``): 429 over it, 418 for persistent offenders.
* ``exchange.recording`` / ``--recording`` replays a recording (:mod:`procs.recording`)
  instead of the bundled candles; ``exchange.start``/``end`` limit the candles to a window.

Trades are synthesized from the real 30-minute candles (:mod:`procs.replay_data`) and
replayed for all markets interleaved in time order, at ``speed`` replay seconds per
wall second, or (``speed = 0``) as fast as the subscribers keep up (each send waits for
the socket to drain). The replay clock starts at the first subscription.
Not served (no order book in the data): ``best_ask_*`` / ``best_bid_*`` trade fields,
orderbook and ticker streams.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import time
from collections import deque
from datetime import datetime, timedelta, timezone

import numpy as np
from aiohttp import WSMsgType, web

from shm.status import State, StatusRow, StatusTable

from . import upbit_format
from .config import process_start
from .faults import FaultError, FaultInjector, RestLimits
from .replay_data import ReplayTape, load_market_all, rollup

log = logging.getLogger("smtm.exchange")

CANDLE_UNITS = (30, 60, 240)       # minutes the replay can serve exactly
IDLE_TIMEOUT_S = 120.0
KST = timezone(timedelta(hours=9))
_FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")

_TRADE_SIMPLE = upbit_format.TRADE
_CANDLE_SIMPLE = upbit_format.CANDLE


def _utc_str(ts_s: int, tz=timezone.utc) -> str:
    return datetime.fromtimestamp(ts_s, tz).strftime("%Y-%m-%dT%H:%M:%S")


class SubscriptionError(ValueError):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


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
            if fmt not in _FORMATS:
                raise SubscriptionError("WRONG_FORMAT", f"unknown format {el['format']!r}")
        elif "method" in el:
            method = el["method"]
        elif "type" in el:
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
        else:
            raise SubscriptionError("WRONG_FORMAT", f"unexpected element {el!r}")
    if method == "LIST_SUBSCRIPTIONS":
        return None
    if not types:
        raise SubscriptionError("NO_TYPE", "no type object in the request")
    return ticket, types, fmt, realtime


class Client:
    """One WebSocket connection and its current subscription."""

    def __init__(self, ws: web.WebSocketResponse, peer: str, transport=None):
        self.ws = ws
        self.peer = peer
        self.transport = transport
        self.types: dict[str, set[str]] = {}
        self.format = "DEFAULT"
        self.ticket = ""
        self.last_activity = time.monotonic()
        self.sent = 0

    def wants(self, ty: str, code: str) -> bool:
        codes = self.types.get(ty)
        return codes is not None and code in codes

    async def send_raw(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)
        self.sent += 1
        self.last_activity = time.monotonic()

    async def send_obj(self, default_obj: dict, simple_map: dict) -> None:
        simple = self.format.startswith("SIMPLE")
        obj = {simple_map.get(k, k): v for k, v in default_obj.items()} if simple else default_obj
        if self.format.endswith("_LIST"):
            obj = [obj]
        await self.ws.send_bytes(json.dumps(obj, separators=(",", ":")).encode())
        self.sent += 1
        self.last_activity = time.monotonic()


class ReplayExchange:
    """Replay state, the WebSocket fan-out and the REST handlers."""

    def __init__(self, tape: ReplayTape, market_all: list[dict], speed: float, status: StatusRow | None = None,
                 rest_per_second: int = 10):
        self.tape = tape
        self.market_all_doc = market_all
        self.speed = float(speed)
        self.status = status
        self.clients: set[Client] = set()
        self.position = 0                      # index of the next trade to send
        self.now_ms = tape.start_ms - 1        # market time of the last trade sent (REST completeness)
        self.clock_now = int(tape.clock_ms[0]) if len(tape.clock_ms) else 0  # replay clock
        self.started = asyncio.Event()
        self.finished = False
        self.subscriptions_received = 0
        self.messages_sent = 0
        self.rest_requests = 0
        self._rollups = {u: {m: rollup(c, u * 60) for m, c in tape.candles.items()} for u in CANDLE_UNITS}
        # per market: trade times and prefix sums of value/volume, for REST ticker windows
        self._tick_index = {}
        for mi, m in enumerate(tape.markets):
            t = tape.trades[tape.trades["market"] == mi]
            t = t[np.argsort(t["ts"], kind="stable")]
            self._tick_index[m] = (t["ts"], np.r_[0.0, np.cumsum(t["price"] * t["volume"])],
                                   np.r_[0.0, np.cumsum(t["volume"])], t["price"], t["volume"])
        n = len(tape.markets)
        # per market: [t, o, h, l, c, v, value, last_ts] of the open bucket per unit
        self._partial: dict[int, list[list | None]] = {u: [None] * n for u in CANDLE_UNITS}
        self._prev_close = [None] * n
        self._day = [None] * n
        self._last_price = [None] * n
        self._last_trade: list[dict | None] = [None] * n
        self.faults = FaultInjector()
        self.limits = RestLimits(per_second=rest_per_second)
        self.paused = False
        self._anchor: tuple[float, int] | None = None   # (wall monotonic, replay ms) of the speed clock
        self._held: list[dict | None] = [None] * n       # trades held back by the reorder fault
        self.subscription_log: deque = deque(maxlen=100)
        self.rest_status_counts: dict[int, int] = {}

    # -- replay -----------------------------------------------------------------------
    async def run(self) -> None:
        """Send every trade of the tape in order; returns when the tape is exhausted.

        The speed clock is anchored at (wall time, replay time) and re-anchored whenever the
        speed changes or the replay resumes, so changes take effect at once without jumps.
        """
        await self.started.wait()
        tape = self.tape
        tr, clock, kinds, index = tape.trades, tape.clock_ms, tape.kinds, tape.index
        n = len(clock)
        i = self.position
        self._anchor = (time.monotonic(), int(clock[0]) if n else 0)
        while i < n:
            if self.paused:
                await asyncio.sleep(0.02)
                continue
            if self.speed > 0:
                wall0, c0 = self._anchor
                due = c0 + (time.monotonic() - wall0) * self.speed * 1000.0
                j = int(np.searchsorted(clock, due, side="right"))
                if j <= i:
                    await asyncio.sleep(min(0.05, max(0.0005, (int(clock[i]) - due) / 1000.0 / self.speed)))
                    continue
                j = min(j, i + 2048)
            else:
                j = min(n, i + 256)
            for e in range(i, j):
                self.clock_now = int(clock[e])
                if kinds[e] == 0:
                    await self._emit(tr[index[e]])
                else:
                    await self._emit_ticker(*tape.tickers[index[e]])
            self.position = i = j
            if self.speed <= 0:
                await asyncio.sleep(0)  # let REST handlers and new subscribers in
        self.finished = True
        log.info("replay finished: %d events sent", n)

    async def _emit_ticker(self, mi: int, msg: dict) -> None:
        if self.faults.stalled():
            return
        code = self.tape.markets[mi]
        for cl in list(self.clients):
            try:
                if cl.wants("ticker", code):
                    await cl.send_obj({**msg, "stream_type": "REALTIME"}, upbit_format.TICKER)
                    self.messages_sent += 1
            except (ConnectionResetError, RuntimeError) as e:
                log.info("dropping client %s: %s", cl.peer, e)
                self.clients.discard(cl)

    def control(self, req: dict) -> dict:
        """Change the replay at run time: ``{"speed": x}``, ``{"pause": true}``, ``{"resume": true}``.

        Raises ValueError for anything else."""
        if "speed" in req:
            sp = req["speed"]
            if not isinstance(sp, (int, float)) or isinstance(sp, bool) or not (sp >= 0 and sp < 1e9):
                raise ValueError("speed must be a number >= 0 (0 = as fast as consumers keep up)")
            self.speed = float(sp)
            self._anchor = (time.monotonic(), self.clock_now)
        elif req.get("pause") is True:
            self.paused = True
        elif req.get("resume") is True:
            self.paused = False
            self._anchor = (time.monotonic(), self.clock_now)
        else:
            raise ValueError('expected {"speed": x}, {"pause": true} or {"resume": true}')
        log.info("replay control: %s", req)
        return self.progress()

    async def _emit(self, rec) -> None:
        mi = int(rec["market"])
        code = self.tape.markets[mi]
        ts = int(rec["ts"])
        price = float(rec["price"])
        vol = float(rec["volume"])
        self.now_ms = ts
        day = ts // 86_400_000
        if self._day[mi] != day:
            self._prev_close[mi] = self._last_price[mi] if self._last_price[mi] is not None else price
            self._day[mi] = day
        self._last_price[mi] = price
        for u in CANDLE_UNITS:
            self._update_partial(u, mi, ts, price, vol)
        pcp = self._prev_close[mi]
        dt = datetime.fromtimestamp(ts / 1000, timezone.utc)
        trade = {"type": "trade", "code": code, "timestamp": int(time.time() * 1000),
                 "trade_date": dt.strftime("%Y-%m-%d"), "trade_time": dt.strftime("%H:%M:%S"),
                 "trade_timestamp": ts, "trade_price": price, "trade_volume": vol,
                 "ask_bid": "BID" if rec["bid"] else "ASK", "prev_closing_price": pcp,
                 "change": "RISE" if price > pcp else "FALL" if price < pcp else "EVEN",
                 "change_price": abs(price - pcp), "sequential_id": int(rec["seq_id"]),
                 "stream_type": "REALTIME"}
        self._last_trade[mi] = trade
        if self.faults.stalled():
            return  # connections stay open, nothing is sent: the clients miss these trades
        bad = self.faults.take_malformed()
        outgoing = [trade]
        if self.faults.take_reorder() and self._held[mi] is None:
            self._held[mi] = trade          # sent after the next trade of this market
            outgoing = []
        elif self._held[mi] is not None:
            outgoing.append(self._held[mi])
            self._held[mi] = None
        if outgoing and self.faults.take_duplicate():
            outgoing.append(outgoing[0])
        for cl in list(self.clients):
            try:
                if bad is not None and cl.types:
                    await cl.send_raw(bad)
                if cl.wants("trade", code):
                    for t in outgoing:
                        await cl.send_obj(t, _TRADE_SIMPLE)
                        self.messages_sent += 1
                for u in CANDLE_UNITS:
                    if cl.types and cl.wants(f"candle.{u}m", code):
                        await cl.send_obj(self._candle_msg(u, mi, "REALTIME"), _CANDLE_SIMPLE)
                        self.messages_sent += 1
            except (ConnectionResetError, RuntimeError) as e:  # closed under us
                log.info("dropping client %s: %s", cl.peer, e)
                self.clients.discard(cl)

    def _update_partial(self, u: int, mi: int, ts: int, price: float, vol: float) -> None:
        b = ts // 1000 // (u * 60) * (u * 60)
        p = self._partial[u][mi]
        if p is None or p[0] != b:
            self._partial[u][mi] = [b, price, price, price, price, vol, price * vol, ts]
        else:
            p[2] = max(p[2], price)
            p[3] = min(p[3], price)
            p[4] = price
            p[5] += vol
            p[6] += price * vol
            p[7] = ts

    def _candle_msg(self, u: int, mi: int, stream: str) -> dict:
        t, o, h, l, c, v, val, last = self._partial[u][mi]
        return {"type": f"candle.{u}m", "code": self.tape.markets[mi], "candle_date_time_utc": _utc_str(t),
                "candle_date_time_kst": _utc_str(t, KST), "opening_price": o, "high_price": h, "low_price": l,
                "trade_price": c, "candle_acc_trade_volume": v, "candle_acc_trade_price": val,
                "timestamp": last, "stream_type": stream}

    # -- WebSocket -------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        if self.faults.refusing():
            return web.json_response({"error": {"name": "unavailable", "message": "outage (injected)"}}, status=503)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 16)
        await ws.prepare(request)
        cl = Client(ws, request.remote or "?", request.transport)
        self.clients.add(cl)
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
            self.clients.discard(cl)
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
            await self._send_error(cl, "WRONG_FORMAT", "request is not JSON")
            return
        except SubscriptionError as e:
            await self._send_error(cl, e.name, str(e))
            return
        self.subscriptions_received += 1
        if parsed is None:
            result = [{"type": t, "codes": sorted(c)} for t, c in cl.types.items()]
            await cl.send_obj({"method": "LIST_SUBSCRIPTIONS", "result": result, "ticket": cl.ticket},
                              {"method": "mthd", "result": "rslt", "ticket": "tckt"})
            return
        cl.ticket, cl.types, cl.format, realtime = parsed  # a new request replaces the old one
        self.subscription_log.append({"at": time.time(), "peer": cl.peer, "format": cl.format,
                                      "types": {t: sorted(c) for t, c in cl.types.items()}})
        log.info("subscription from %s: %s (%s)", cl.peer, {t: len(c) for t, c in cl.types.items()}, cl.format)
        for ty, codes in cl.types.items():
            if realtime.get(ty):
                continue
            for code in sorted(codes):
                if code not in self.tape.markets:
                    continue
                mi = self.tape.markets.index(code)
                if ty == "trade" and self._last_trade[mi] is not None:
                    await cl.send_obj({**self._last_trade[mi], "stream_type": "SNAPSHOT"}, _TRADE_SIMPLE)
                elif ty.startswith("candle.") and self._partial[int(ty[7:-1])][mi] is not None:
                    await cl.send_obj(self._candle_msg(int(ty[7:-1]), mi, "SNAPSHOT"), _CANDLE_SIMPLE)
        self.started.set()

    @staticmethod
    async def _send_error(cl: Client, name: str, message: str) -> None:
        await cl.ws.send_bytes(json.dumps({"error": {"name": name, "message": message}}).encode())

    # -- REST ------------------------------------------------------------------------
    async def _admit(self, group: str) -> tuple[str, web.Response | None]:
        """Account a REST request of ``group``: ``(Remaining-Req header, error response or None)``.

        Applies injected faults first (429 / 418 / delay), then Upbit's per-group limit."""
        self.rest_requests += 1
        fault = self.faults.rest_fault()
        if fault is not None and fault[0] == 0:
            await asyncio.sleep(fault[1])
            fault = None
        if fault is not None:
            status = fault[0]
            rem = f"group={group}; min=1800; sec=0"
        else:
            status, left, _ = self.limits.check(group)
            rem = f"group={group}; min=1800; sec={left}"
        self.rest_status_counts[status] = self.rest_status_counts.get(status, 0) + 1
        if status == 429:
            return rem, self._error(429, "too_many_requests", "Too many API requests.", rem)
        if status == 418:
            left_s = max(self.limits.blocked_until, self.faults.rest_418_until) - time.monotonic()
            resp = self._error(418, "blocked", f"Blocked for {max(1, math.ceil(left_s))} seconds "
                                               f"after repeated rate-limit violations.", rem)
            resp.headers["Retry-After"] = str(max(1, math.ceil(left_s)))
            return rem, resp
        return rem, None

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
                to = to.replace(tzinfo=timezone.utc)
            to_s = int(to.timestamp())
        rows = self._candles_upto(market, unit, to_s, count)
        body = [{"market": market, "candle_date_time_utc": _utc_str(int(r[0])),
                 "candle_date_time_kst": _utc_str(int(r[0]), KST), "opening_price": r[1], "high_price": r[2],
                 "low_price": r[3], "trade_price": r[4], "timestamp": int(r[7]),
                 "candle_acc_trade_price": r[6], "candle_acc_trade_volume": r[5], "unit": unit} for r in rows]
        return web.json_response(body, headers={"Remaining-Req": rem})

    def _candles_upto(self, market: str, unit: int, to_s: int | None, count: int) -> list[tuple]:
        """Newest first, at most ``count``: candles complete by the replay clock, then the
        open one (partial, from the trades sent so far); only starts before ``to_s``."""
        u_s = unit * 60
        hist = self._rollups[unit][market]
        complete = hist[(hist["t"] + u_s) * 1000 <= self.now_ms]
        if to_s is not None:
            complete = complete[complete["t"] < to_s]
        rows = [tuple(r) for r in complete[-count:]]
        p = self._partial[unit][self.tape.markets.index(market)]
        if (p is not None and (p[0] + u_s) * 1000 > self.now_ms and (to_s is None or p[0] < to_s)
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
        now = self.now_ms
        hi = int(np.searchsorted(ts, now, side="right"))
        if hi == 0:
            return None
        day0 = now // 86_400_000 * 86_400_000
        d0 = int(np.searchsorted(ts, day0, side="left"))
        w0 = int(np.searchsorted(ts, now - 86_400_000, side="right"))
        last = float(price[hi - 1])
        prev_close = float(price[d0 - 1]) if d0 > 0 else float(price[0])
        day_prices = price[d0:hi] if hi > d0 else price[hi - 1:hi]
        dt = datetime.fromtimestamp(int(ts[hi - 1]) / 1000, timezone.utc)
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
                "acc_trade_price": float(cum_val[hi] - cum_val[d0]), "acc_trade_price_24h": float(cum_val[hi] - cum_val[w0]),
                "acc_trade_volume": float(cum_vol[hi] - cum_vol[d0]), "acc_trade_volume_24h": float(cum_vol[hi] - cum_vol[w0]),
                "timestamp": int(time.time() * 1000)}

    async def replay_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.progress())

    def progress(self) -> dict:
        n = len(self.tape.clock_ms)
        return {"position": self.position, "trades": len(self.tape.trades), "events": n, "percent": 100.0 * self.position / n if n else 100.0,
                "replay_time": _utc_str(max(self.now_ms, self.tape.start_ms) // 1000) + "Z",
                "speed": self.speed, "paused": self.paused, "started": self.started.is_set(),
                "finished": self.finished, "faults": self.faults.state(),
                "rest_status_counts": {str(k): v for k, v in self.rest_status_counts.items()},
                "rest_limit_per_s": self.limits.per_second,
                "rest_max_sent_per_s": {g: self.limits.max_in_any_second(g, sent=True)
                                        for g in sorted({g for _, g in self.limits.sent_log})},
                "subscriptions": list(self.subscription_log)[-5:],
                "clients": len(self.clients), "subscriptions_received": self.subscriptions_received,
                "messages_sent": self.messages_sent, "rest_requests": self.rest_requests,
                "markets": self.tape.markets}

    async def replay_control(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.control(await request.json()))
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
            for cl in list(self.clients):
                if cl.transport is not None:
                    cl.transport.abort()  # no close frame: the client sees a dead socket
                self.clients.discard(cl)
        return web.json_response(state)

    async def heartbeat(self, period_s: float = 0.25) -> None:
        while True:
            if self.status is not None:
                pr = self.progress()
                self.status.msgs_out = self.messages_sent
                self.status.msgs_in = self.subscriptions_received + self.rest_requests
                self.status.detail = (f"replay {pr['replay_time']} {pr['percent']:.1f}% x{self.speed:g}"
                                      + (" paused" if self.paused else "") + (" finished" if self.finished else ""))
                self.status.beat(State.RUNNING)
            await asyncio.sleep(period_s)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/websocket/v1", self.ws_handler)
        app.router.add_get("/v1/market/all", self.market_all)
        app.router.add_get("/v1/candles/minutes/{unit}", self.candles_minutes)
        app.router.add_get("/v1/ticker", self.ticker)
        app.router.add_get("/replay/status", self.replay_status)
        app.router.add_post("/replay/control", self.replay_control)
        app.router.add_get("/faults", self.faults_get)
        app.router.add_post("/faults", self.faults_post)
        return app


async def serve(exchange: ReplayExchange, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(exchange.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("replay exchange on http://%s:%d (%d markets, %d trades, speed %g)", host, port,
             len(exchange.tape.markets), len(exchange.tape.trades), exchange.speed)
    tasks = [asyncio.create_task(exchange.run()), asyncio.create_task(exchange.heartbeat())]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await runner.cleanup()


def _day(s: str) -> int | None:
    """'YYYY-MM-DD' (UTC) → Unix s; '' → None."""
    return int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp()) if s else None


def main(argv: list[str] | None = None) -> int:
    def add_args(ap):
        ap.add_argument("--speed", type=float, help="replay seconds per wall second; 0 = as fast as consumers keep up")
        ap.add_argument("--port", type=int, help="TCP port on the configured host (loopback)")
        ap.add_argument("--recording", help="replay a recording (path or glob) instead of the bundled candles")
    cfg, args = process_start("exchange", "Upbit-compatible replay exchange on loopback", argv, add_args)
    if cfg is None:
        return 2
    ex_cfg = cfg.exchange
    speed = ex_cfg.speed if args.speed is None else args.speed
    port = ex_cfg.port if args.port is None else args.port
    if ex_cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.error("exchange.host = %r: the replay exchange listens on loopback only", ex_cfg.host)
        return 2
    table = StatusTable.writer(cfg.instance)
    row = StatusRow(table, "exchange")
    t0 = time.monotonic()
    recording = args.recording or ex_cfg.recording
    if recording:
        from .config import ROOT
        from .recording import expand, tape_from_recording
        files = expand(recording, ROOT)
        tape = tape_from_recording(files)
        log.info("replaying a recording: %d files, %d trades, %d tickers, %d markets", len(files),
                 len(tape.trades), len(tape.tickers), len(tape.markets))
    else:
        tape = ReplayTape.build(cfg.data_path(), cfg.markets, ex_cfg.trades_per_candle,
                                _day(ex_cfg.start), _day(ex_cfg.end))
    log.info("tape built in %.2f s: %s", time.monotonic() - t0,
             ", ".join(f"{m} {len(c)} candles" for m, c in tape.candles.items()))
    exchange = ReplayExchange(tape, load_market_all(cfg.data_path()), speed, row, ex_cfg.rest_per_second)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(exchange, ex_cfg.host, port, stop)

    try:
        asyncio.run(_main())
    finally:
        row.stopped()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
