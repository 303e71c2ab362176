"""ingest — Upbit WebSocket trades → candles in shared memory (the only writer of ``candles.<tf>``).

Connects with websocket-client to ``ingest.ws_url`` (the replay exchange in the
``replay`` profile, Upbit in ``live``), subscribes to ``trade`` for ``markets.codes``,
aggregates every trade into each configured timeframe (:mod:`procs.candles`), publishes
each touched ring (global ``seq``) and wakes the indicator if it is parked. Its status
row carries heartbeat, connection state, counters and lag (receive time minus the
message's server ``timestamp``).

Bad input never reaches a ring: a frame that is not JSON, a trade with a missing,
non-finite or non-positive field, or an unknown market is counted in ``dropped`` and
dropped; unknown message types are counted too; Upbit error messages are logged and
counted in ``errors``. On close or error it reconnects after ``ingest.reconnect_delay_s``
and resends the full subscription (Upbit forgets subscriptions with the connection).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import socket
import threading
import time
import uuid
from collections import Counter

import websocket

from shm.status import State, StatusRow, StatusTable
from shm.tables import create_candles
from shm.wake import Waker

from .candles import CandleBuilder
from .config import Config, process_start, tf_seconds

log = logging.getLogger("smtm.ingest")

# DEFAULT field → SIMPLE key, for the fields ingest reads
_K = {"type": "ty", "code": "cd", "trade_price": "tp", "trade_volume": "tv", "trade_timestamp": "ttms",
      "timestamp": "tms", "sequential_id": "sid"}


class Ingest:
    """Trade handling and ring writing, independent of the socket (tests feed ``on_message``)."""

    def __init__(self, cfg: Config, status: StatusTable):
        self.cfg = cfg
        self.row = StatusRow(status, "ingest")
        self.rings = {tf: create_candles(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
                      for tf in cfg.ingest.timeframes}
        # same row for a market in every timeframe table (rows assigned in config order)
        self.market_row: dict[str, int] = {}
        for code in cfg.markets:
            rows = {ring.assign_row(code) for ring in self.rings.values()}
            if len(rows) != 1:
                raise RuntimeError(f"market {code} has different rows across timeframes: {rows}; run `smtm down`")
            self.market_row[code] = rows.pop()
        for ring in self.rings.values():
            ring.publish()
        self.builders = [CandleBuilder(ring, tf_seconds(tf)) for tf, ring in self.rings.items()]
        self.waker = Waker(cfg.instance, status, ["indicator"])
        self.drops: Counter[str] = Counter()
        self.trades = 0
        self.last_price: dict[str, float] = {}

    # -- message handling -------------------------------------------------------------
    def on_message(self, data: bytes | str) -> None:
        """Handle one WebSocket frame (bytes of UTF-8 JSON, or text)."""
        self.row.msgs_in += 1
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            self._drop("not_json")
            return
        for item in obj if isinstance(obj, list) else (obj,):
            self._on_object(item)

    def _on_object(self, obj) -> None:
        if not isinstance(obj, dict):
            self._drop("not_object")
            return
        ty = obj.get("type", obj.get("ty"))
        if ty == "trade":
            self._on_trade(obj, "trade_price" in obj)
        elif "status" in obj:
            pass  # {"status":"UP"}: keep-alive answer
        elif "error" in obj:
            self.row.errors += 1
            log.error("exchange error: %s", obj["error"])
        else:
            self._drop(f"type:{ty}")

    def _on_trade(self, obj: dict, default: bool) -> None:
        g = obj.get if default else (lambda k: obj.get(_K[k]))
        code, price, vol, ts = g("code"), g("trade_price"), g("trade_volume"), g("trade_timestamp")
        row = self.market_row.get(code) if isinstance(code, str) else None
        if row is None:
            self._drop("unknown_market")
            return
        if not (_is_num(price) and _is_num(vol) and isinstance(ts, int) and not isinstance(ts, bool)) \
                or not (math.isfinite(price) and math.isfinite(vol)) or price <= 0 or vol <= 0 or ts <= 0:
            self._drop("bad_trade")
            return
        price, vol = float(price), float(vol)
        for b in self.builders:
            if b.is_late(row, ts):
                b.late += 1
                self._drop("late_trade")
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

    def subscription(self) -> str:
        """The complete subscription request (Upbit replaces, never adds)."""
        return json.dumps([{"ticket": f"smtm-{uuid.uuid4()}"},
                           {"type": "trade", "codes": list(self.market_row), "is_only_realtime": True},
                           {"format": self.cfg.ingest.format}])


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class IngestProcess:
    """The process: WebSocket connection loop, heartbeat thread, signal handling."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.status = StatusTable.writer(cfg.instance)
        self.ingest = Ingest(cfg, self.status)
        self.stopping = threading.Event()
        self.app: websocket.WebSocketApp | None = None
        self.connected = False

    def _on_open(self, ws) -> None:
        self.connected = True
        ws.send(self.ingest.subscription())
        log.info("connected to %s, subscribed to %d markets", self.cfg.ingest.ws_url, len(self.ingest.market_row))

    def _on_close(self, ws, code, reason) -> None:
        self.connected = False
        log.warning("connection closed (%s %s)", code, reason)

    def _on_error(self, ws, err) -> None:
        self.ingest.row.errors += 1
        log.warning("websocket error: %s", err)

    def _heartbeat(self) -> None:
        row = self.ingest.row
        while not self.stopping.is_set():
            row.detail = (f"{'connected' if self.connected else 'disconnected'} {self.cfg.ingest.ws_url} "
                          f"trades={self.ingest.trades}")
            row.beat(State.RUNNING if self.connected else State.DISCONNECTED)
            self.stopping.wait(self.cfg.ingest.heartbeat_s)

    def stop(self, *_):
        """SIGTERM/SIGINT: end the read loop by shutting the socket down (a syscall, safe in a
        signal handler). Never raise here: that could interrupt a seqlock write half-way."""
        self.stopping.set()
        app = self.app
        if app is not None:
            app.keep_running = False
            sock = getattr(getattr(app, "sock", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        hb = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        hb.start()
        ic = self.cfg.ingest
        while not self.stopping.is_set():
            self.app = websocket.WebSocketApp(
                ic.ws_url, on_open=self._on_open, on_message=lambda ws, m: self.ingest.on_message(m),
                on_error=self._on_error, on_close=self._on_close)
            self.app.run_forever(ping_interval=ic.ping_interval_s, ping_timeout=ic.ping_timeout_s,
                                 skip_utf8_validation=True)
            self.connected = False
            if self.stopping.wait(ic.reconnect_delay_s):
                break
            self.ingest.row.reconnects += 1
            log.info("reconnecting to %s (attempt %d)", ic.ws_url, self.ingest.row.reconnects)
        self.stopping.set()
        hb.join(timeout=2)
        self.ingest.row.stopped()
        log.info("stopped: %d trades, drops %s, late %s", self.ingest.trades, dict(self.ingest.drops),
                 [b.late for b in self.ingest.builders])
        return 0


def main(argv: list[str] | None = None) -> int:
    cfg, _ = process_start("ingest", "Upbit trades → shared-memory candles", argv)
    return 2 if cfg is None else IngestProcess(cfg).run()


if __name__ == "__main__":
    raise SystemExit(main())
