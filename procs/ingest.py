"""ingest — Upbit WebSocket trades → candles in shared memory (the only writer of ``candles.<tf>``).

Connects with websocket-client to ``ingest.ws_url`` (the replay exchange in the ``replay``
profile, Upbit in ``live``; same code, only URLs differ), subscribes to ``trade`` (and
``ticker`` with ``ingest.subscribe_ticker``) for the universe, aggregates every trade into
each configured timeframe (:mod:`procs.candles`), publishes each touched ring (global
``seq``) and wakes the indicator if it is parked. DEFAULT and SIMPLE formats decode alike.

The universe is ``markets.codes`` until a ``symbols`` table exists (``smtm universe set``,
later the symbols process); when its ``version`` moves, ingest gives new markets rows and
resends the **complete** subscription on the same connection (Upbit replaces, never adds).
Every message ingest sends — subscriptions and the text keep-alive ``PING`` — goes through a
per-connection limiter (5/s, 100/min); pending subscription changes are coalesced.

Surviving the real world:

* keep-alive: WebSocket ping frames every ``ping_interval_s`` and the text ``PING`` every
  ``keepalive_s`` (Upbit answers ``{"status":"UP"}``), well inside Upbit's 120 s idle limit;
* a connection silent for ``stall_timeout_s`` (no frame at all) is treated as stalled and
  closed; on close, error or stall it reconnects with exponential backoff
  (``backoff_base_s`` doubling to ``backoff_cap_s``, ±50 % jitter), never more than
  ``max_connects_per_s`` attempts per second;
* when data (re)starts after a (re)connect, after any silence longer than 1.5 keep-alive
  periods (a hole in time), and shortly after a late trade, the affected candles are repaired
  from REST before the next frame is applied (:mod:`procs.backfill`, flagged ``BACKFILLED``);
  trades the REST candles already cover are skipped;
* a trade seen twice (same market and ``sequential_id``) is counted once;
* with ``ingest.record`` every received frame is written to rotating compressed JSONL
  (:mod:`procs.recording`), which the replay exchange can serve again;
* bad input never reaches a ring: a frame that is not JSON, a trade or ticker with a missing,
  non-finite or non-positive field, or an unknown market is counted in ``dropped`` and
  dropped; unknown message types are counted too; Upbit error messages are logged and
  counted in ``errors``.

Rule for late trades: a trade older than the market's newest candle (in any timeframe) is
not applied (a closed candle never changes from the stream); it is counted as
``late_trade`` and its candle is re-read from REST, which is the authority on history.
State, reconnect count and counters are in the status row (``smtm status``).
"""
from __future__ import annotations

import json
import logging
import math
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque

import requests
import websocket

from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.status import State, StatusRow, StatusTable
from shm.symbols import SymbolsTable
from shm.tables import create_candles
from shm.wake import Waker

from . import upbit_format
from .backfill import Backfiller
from .candles import CandleBuilder
from .config import Config, process_start, tf_seconds
from .rest import RateLimiter, RestClient, RestError

log = logging.getLogger("smtm.ingest")

def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _getter(obj: dict):
    """Field access by DEFAULT name for a DEFAULT or SIMPLE message (SIMPLE keys of its own type)."""
    if "type" in obj:
        return obj.get
    keys = upbit_format.keymap(obj.get("ty") or "")
    return lambda k: obj.get(keys.get(k, k))


def parse_ticker(obj: dict) -> dict | None:
    """A ``ticker`` message (DEFAULT or SIMPLE) → ``{code, trade_price, acc_trade_price_24h,
    acc_trade_volume_24h, trade_timestamp, market_state}``; None if a field is missing or bad."""
    g = _getter(obj)
    code, price, atp, atv, ts = g("code"), g("trade_price"), g("acc_trade_price_24h"), \
        g("acc_trade_volume_24h"), g("trade_timestamp")
    if not isinstance(code, str) or not all(_is_num(x) and math.isfinite(x) for x in (price, atp, atv)) \
            or price <= 0 or atp < 0 or atv < 0 or not (isinstance(ts, int) and not isinstance(ts, bool) and ts > 0):
        return None
    return {"code": code, "trade_price": float(price), "acc_trade_price_24h": float(atp),
            "acc_trade_volume_24h": float(atv), "trade_timestamp": ts, "market_state": g("market_state")}


class Dedupe:
    """The last ``window`` sequential_ids per market."""

    def __init__(self, window: int):
        self.window = window
        self._seen: dict[str, set] = {}
        self._order: dict[str, deque] = {}

    def seen(self, code: str, sid) -> bool:
        """True if (code, sid) was seen before; else remember it."""
        s = self._seen.setdefault(code, set())
        if sid in s:
            return True
        q = self._order.setdefault(code, deque())
        s.add(sid)
        q.append(sid)
        if len(q) > self.window:
            s.discard(q.popleft())
        return False


class SendLimiter:
    """Upbit's per-connection message limit: ``per_s`` per second and ``per_min`` per minute."""

    def __init__(self, per_s: int = 5, per_min: int = 100, clock=time.monotonic):
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


class Ingest:
    """Trade handling and ring writing, independent of the socket (tests feed ``on_message``).

    Every ring write happens under :attr:`lock` (the WebSocket thread applies trades; the
    heartbeat thread applies universe changes and REST repairs)."""

    def __init__(self, cfg: Config, status: StatusTable, rest: RestClient | None = None,
                 universe: list[str] | None = None):
        self.cfg = cfg
        self.lock = threading.RLock()
        self.row = StatusRow(status, "ingest")
        self.tf_s = {tf: tf_seconds(tf) for tf in cfg.ingest.timeframes}
        self.rings = {tf: create_candles(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
                      for tf in cfg.ingest.timeframes}
        self.market_row: dict[str, int] = {}
        self.universe: list[str] = []
        self.builders_by_tf = {tf: CandleBuilder(ring, self.tf_s[tf]) for tf, ring in self.rings.items()}
        self.builders = list(self.builders_by_tf.values())
        self.backfill = Backfiller(rest, self.rings, self.builders_by_tf, self.tf_s) if rest else None
        self.waker = Waker(cfg.instance, status, ["indicator"])
        self.dedupe = Dedupe(cfg.ingest.dedupe_window)
        self.drops: Counter[str] = Counter()
        self.trades = 0
        self.duplicates = 0
        self.last_price: dict[str, float] = {}
        self.tickers: dict[str, dict] = {}
        self.covered_ms: dict[str, int] = {}       # trades up to here are in REST candles already
        self.pending_repairs: dict[str, int | None] = {}
        self.repair_due = 0.0
        self.set_universe(list(universe or cfg.markets))

    # -- universe -------------------------------------------------------------------------
    def set_universe(self, codes: list[str]) -> bool:
        """Give every market a row (the same in every timeframe); a market new to this process
        gets a REST warm-up. Returns True if the universe changed."""
        with self.lock:
            if codes == self.universe:
                return False
            for code in codes:
                if code in self.market_row:
                    continue
                if self.universe:  # a market added while running: its history comes from REST
                    self.schedule_repair(code, None)
                rows = {ring.assign_row(code) for ring in self.rings.values()}
                if len(rows) != 1:
                    raise RuntimeError(f"market {code} has different rows across timeframes: {rows}; run `smtm down`")
                self.market_row[code] = rows.pop()
            for ring in self.rings.values():
                ring.publish()
            self.universe = list(codes)
            return True

    def subscription(self) -> str:
        """The complete subscription request (Upbit replaces, never adds)."""
        req = [{"ticket": f"smtm-{uuid.uuid4()}"},
               {"type": "trade", "codes": list(self.universe), "is_only_realtime": True}]
        if self.cfg.ingest.subscribe_ticker:
            req.append({"type": "ticker", "codes": list(self.universe), "is_only_realtime": True})
        req.append({"format": self.cfg.ingest.format})
        return json.dumps(req)

    # -- message handling -------------------------------------------------------------------
    def on_message(self, data: bytes | str) -> None:
        """Handle one WebSocket frame (bytes of UTF-8 JSON, or text)."""
        self.row.msgs_in += 1
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            self._drop("not_json")
            return
        with self.lock:
            for item in obj if isinstance(obj, list) else (obj,):
                self._on_object(item)

    def _on_object(self, obj) -> None:
        if not isinstance(obj, dict):
            self._drop("not_object")
            return
        ty = obj.get("type", obj.get("ty"))
        if ty == "trade":
            self._on_trade(obj)
        elif ty == "ticker":
            t = parse_ticker(obj)
            if t is None or t["code"] not in self.market_row:
                self._drop("bad_ticker")
            else:
                self.tickers[t["code"]] = t
        elif "status" in obj:
            pass  # {"status":"UP"}: keep-alive answer
        elif "error" in obj:
            self.row.errors += 1
            log.error("exchange error: %s", obj["error"])
        else:
            self._drop(f"type:{ty}")

    def _on_trade(self, obj: dict) -> None:
        g = _getter(obj)
        code, price, vol, ts = g("code"), g("trade_price"), g("trade_volume"), g("trade_timestamp")
        row = self.market_row.get(code) if isinstance(code, str) else None
        if row is None:
            self._drop("unknown_market")
            return
        if not (_is_num(price) and _is_num(vol) and isinstance(ts, int) and not isinstance(ts, bool)) \
                or not (math.isfinite(price) and math.isfinite(vol)) or price <= 0 or vol <= 0 or ts <= 0:
            self._drop("bad_trade")
            return
        sid = g("sequential_id")
        if isinstance(sid, int) and not isinstance(sid, bool) and self.dedupe.seen(code, sid):
            self.duplicates += 1
            self._drop("duplicate")
            return
        if ts <= self.covered_ms.get(code, 0):
            return  # already counted in the REST candles of the last repair
        price, vol = float(price), float(vol)
        for b in self.builders:
            if b.is_late(row, ts):
                self._drop("late_trade")
                self.schedule_repair(code, ts // 1000)
                return
        for b in self.builders:
            b.on_trade(row, ts, price, vol)
        self.trades += 1
        self.last_price[code] = price
        for ring in self.rings.values():
            ring.publish()
        self.waker.wake()
        self.row.msgs_out += 1
        server_ms = g("timestamp")
        if _is_num(server_ms):
            self.row.lag_ns = time.time_ns() - int(server_ms) * 1_000_000

    def _drop(self, why: str) -> None:
        self.drops[why] += 1
        self.row.dropped += 1

    # -- repairs ------------------------------------------------------------------------------
    def schedule_repair(self, code: str, since_s: int | None, delay_s: float = 0.3) -> None:
        """Ask for a REST repair of ``code`` from ``since_s`` (coalesced; run by :meth:`run_repairs`)."""
        if self.backfill is None:
            return
        # None (the latest page, for an empty ring) yields to any concrete start; starts merge to the earliest
        prev = self.pending_repairs.get(code)
        self.pending_repairs[code] = since_s if prev is None else prev if since_s is None else min(prev, since_s)
        due = time.monotonic() + delay_s
        self.repair_due = min(self.repair_due, due) if self.repair_due else due

    def warm_up(self) -> None:
        """Before subscribing: markets with no candle yet get the latest REST page (history the
        stream cannot give). Run before the subscription so the stream takes over from there."""
        if self.backfill is None:
            return
        fine = self.rings[self.backfill.fine]
        for code in self.universe:
            if fine.count(self.market_row[code]) == 0:
                self.schedule_repair(code, None, delay_s=0.0)
        self.run_repairs()

    def schedule_reconnect_repairs(self) -> None:
        """After subscribing: every market that has candles, from the start of its newest one
        (covers whatever happened while disconnected, up to now)."""
        if self.backfill is None:
            return
        fine = self.rings[self.backfill.fine]
        for code in self.universe:
            row = self.market_row[code]
            if fine.count(row):
                self.schedule_repair(code, int(fine.read_last(row, 1)[0]["t"][0]), delay_s=0.0)

    def run_repairs(self) -> int:
        """Run the due repairs (fetch + apply under the lock). Returns markets repaired."""
        if not self.pending_repairs or time.monotonic() < self.repair_due:
            return 0
        done = 0
        with self.lock:
            for code, since in list(self.pending_repairs.items()):
                try:
                    last = self.backfill.repair(code, self.market_row[code], since)
                except (RestError, requests.RequestException) as e:
                    self.row.errors += 1
                    log.warning("backfill of %s failed (%s); retrying in 2 s", code, e)
                    self.repair_due = time.monotonic() + 2.0
                    return done
                if last is not None:
                    self.covered_ms[code] = max(self.covered_ms.get(code, 0), last)
                del self.pending_repairs[code]
                done += 1
            if done:
                self.waker.wake()
            self.repair_due = 0.0
        return done


class IngestProcess:
    """The process: connection loop with backoff, heartbeat/keep-alive/stall/universe thread."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.status = StatusTable.writer(cfg.instance)
        self.limiter = RateLimiter()
        self.symbols: SymbolsTable | None = None
        self.symbols_version = -1
        initial = self._read_universe()
        self.ingest = Ingest(cfg, self.status, RestClient(cfg.ingest.rest_url, self.limiter), initial)
        self.stopping = threading.Event()
        self.app: websocket.WebSocketApp | None = None
        self.connected = False
        self.last_frame = 0.0
        self.last_ping = 0.0
        self.send_limiter = SendLimiter()
        self.subscription_pending = False
        self.backoff = Backoff(cfg.ingest.backoff_base_s, cfg.ingest.backoff_cap_s)
        self.last_connect = 0.0
        self.repair_before_next_frame = False
        self.hole_s = 1.5 * cfg.ingest.keepalive_s  # the UP answers make longer silences a hole
        self.recorder = None
        if cfg.ingest.record:
            from pathlib import Path

            from .recording import Recorder
            rdir = Path(cfg.ingest.record_dir) if cfg.ingest.record_dir else cfg.run_dir / "recordings"
            self.recorder = Recorder(rdir, cfg.ingest.record_rotate_s, cfg.ingest.record_rotate_mb)

    # -- websocket callbacks (WebSocket thread) --------------------------------------------
    def _on_open(self, ws) -> None:
        self.connected = True
        self.last_frame = time.monotonic()
        self.send_limiter = SendLimiter()  # the limit is per connection
        self.ingest.warm_up()
        self._send_subscription(ws)
        self.repair_before_next_frame = True
        log.info("connected to %s, subscribed to %d markets", self.cfg.ingest.ws_url, len(self.ingest.universe))

    def _on_message(self, ws, data) -> None:
        now = time.monotonic()
        # Repair from REST when data (re)starts — not when the socket opens: a stream that stays
        # silent after connecting (a stall) would otherwise lose what happens before it resumes.
        # The same after any silence longer than the keep-alive period allows (a hole in time).
        if self.repair_before_next_frame or now - self.last_frame > self.hole_s:
            self.repair_before_next_frame = False
            self.ingest.schedule_reconnect_repairs()
            self.ingest.run_repairs()
        self.last_frame = now
        if self.recorder is not None:
            self.recorder.write(time.time_ns() // 1_000_000, data)
        self.ingest.on_message(data)

    def _on_close(self, ws, code, reason) -> None:
        self.connected = False
        log.warning("connection closed (%s %s)", code, reason)

    def _on_error(self, ws, err) -> None:
        self.ingest.row.errors += 1
        log.warning("websocket error: %s", err)

    def _send_subscription(self, ws) -> None:
        if self.send_limiter.allow():
            ws.send(self.ingest.subscription())
            self.send_limiter.record()
            self.subscription_pending = False
        else:
            self.subscription_pending = True

    # -- heartbeat thread ------------------------------------------------------------------------
    def _read_universe(self) -> list[str] | None:
        """The symbols table's universe if the table exists and moved since last read, else None."""
        if self.symbols is None:
            try:
                self.symbols = SymbolsTable.open(self.cfg.instance, self.cfg.shm.rows)
            except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
                return None
        ver = self.symbols.version
        if ver == self.symbols_version:
            return None
        self.symbols_version = ver
        return self.symbols.universe() or None

    def _poll_universe(self) -> None:
        codes = self._read_universe()
        if codes and self.ingest.set_universe(codes):
            log.info("universe version %d: %d markets; resubscribing", self.symbols_version, len(codes))
            self.subscription_pending = True

    def _tick(self) -> None:
        now = time.monotonic()
        ic = self.cfg.ingest
        self._poll_universe()
        app = self.app
        if self.connected and app is not None:
            try:
                if self.subscription_pending:
                    self._send_subscription(app)
                if now - self.last_ping >= ic.keepalive_s and self.send_limiter.allow():
                    app.send("PING")
                    self.send_limiter.record()
                    self.last_ping = now
            except websocket.WebSocketException as e:
                log.warning("send failed: %s", e)
            if now - self.last_frame > ic.stall_timeout_s:
                log.warning("no frame for %.1f s: connection stalled, reconnecting", now - self.last_frame)
                self._close_socket()
        if self.connected:
            self.ingest.run_repairs()
        row = self.ingest.row
        row.detail = (f"{'connected' if self.connected else 'disconnected'} {ic.ws_url} trades={self.ingest.trades} "
                      f"dup={self.ingest.duplicates} repairs={self.ingest.backfill.repairs if self.ingest.backfill else 0}")
        row.beat(State.RUNNING if self.connected else State.DISCONNECTED)

    def _heartbeat(self) -> None:
        while not self.stopping.is_set():
            try:
                self._tick()
            except Exception:  # the heartbeat must survive anything; the error is logged
                log.exception("heartbeat tick failed")
            self.stopping.wait(self.cfg.ingest.heartbeat_s)

    def _close_socket(self) -> None:
        app = self.app
        sock = getattr(getattr(app, "sock", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self, *_):
        """SIGTERM/SIGINT: end the read loop by shutting the socket down (a syscall, safe in a
        signal handler). Never raise here: that could interrupt a seqlock write half-way."""
        self.stopping.set()
        if self.app is not None:
            self.app.keep_running = False
        self._close_socket()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        hb = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        hb.start()
        ic = self.cfg.ingest
        while not self.stopping.is_set():
            gap = 1.0 / ic.max_connects_per_s - (time.monotonic() - self.last_connect)
            if gap > 0 and self.stopping.wait(gap):
                break
            self.last_connect = time.monotonic()
            self.app = websocket.WebSocketApp(ic.ws_url, on_open=self._on_open, on_message=self._on_message,
                                              on_error=self._on_error, on_close=self._on_close)
            opened_at = time.monotonic()
            self.app.run_forever(ping_interval=ic.ping_interval_s, ping_timeout=ic.ping_timeout_s,
                                 skip_utf8_validation=True)
            self.connected = False
            if self.stopping.is_set():
                break
            if self.last_frame > opened_at:  # it worked for a while: start the backoff over
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self.ingest.row.reconnects += 1
            log.info("reconnecting to %s in %.2f s (attempt %d)", ic.ws_url, delay, self.backoff.attempt)
            if self.stopping.wait(delay):
                break
        self.stopping.set()
        hb.join(timeout=2)
        if self.recorder is not None:
            self.recorder.close()
            log.info("recorded %d frames to %s", self.recorder.frames, ", ".join(map(str, self.recorder.files)))
        self.ingest.row.stopped()
        log.info("stopped: %d trades, drops %s, repairs %d", self.ingest.trades, dict(self.ingest.drops),
                 self.ingest.backfill.repairs if self.ingest.backfill else 0)
        return 0


def main(argv: list[str] | None = None) -> int:
    cfg, _ = process_start("ingest", "Upbit trades → shared-memory candles", argv)
    return 2 if cfg is None else IngestProcess(cfg).run()


if __name__ == "__main__":
    raise SystemExit(main())
