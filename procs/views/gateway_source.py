"""What the gateway serves, read from shared memory only (every table mapped **read-only**: the gateway is never
a second writer, and never reads the ledger).

Each answer is a plain dict (JSON-ready) built from one consistent copy of the tables it reads, with the global
``seq`` of the table it came from, so a client (and the tests) can tell which state of shared memory it saw.
Tables that do not exist yet (their writer not started) answer as empty — ``available: false`` — rather than
failing: the gateway may start before the engine. Thread-safe: the web server calls it from a pool of threads;
mappings are attached once, under a lock.
"""
from __future__ import annotations

import threading
import time

from shm.ring import RingTable
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.status import State, StatusTable
from shm.symbols import IN_UNIVERSE, TRADABLE, SymbolsTable
from shm.tables import CANDLES, INDICATORS, TIMELINE_ROW, candles_with_indicators
from shm.trading import (
    MODE_NAMES,
    RISK_FLAG_NAMES,
    record_dict,
)

from ..market.surge import SurgeRule, surge_at
from ..runtime.config import BaseConfig
from ..runtime.roster import STATUS_ROWS
from ..trading.commands import timeline_entry
from .trading_source import ENGINE_TABLES

_MISSING = (SegmentNotFound, SegmentNotReady, LayoutMismatch)


class UnknownMarket(LookupError):
    """No row of the candle table holds that market."""


class ShmGatewaySource:
    """The gateway's read-only view of an instance's shared memory (``base``: its tables' sizes)."""

    def __init__(self, base: BaseConfig):
        self.base = base
        self._lock = threading.Lock()
        self._status: StatusTable | None = None
        self._symbols: SymbolsTable | None = None
        self._rings: dict[str, tuple[RingTable, RingTable]] = {}
        self._trading: dict = {}

    # -- attaching ------------------------------------------------------------------------------------
    def _attach(self, what: str):
        with self._lock:
            b = self.base
            try:
                if what == "status":
                    self._status = self._status or StatusTable.open(b.instance, STATUS_ROWS)
                    return self._status
                if what == "symbols":
                    self._symbols = self._symbols or SymbolsTable.open(b.instance, b.shm.rows)
                    return self._symbols
                if what in ENGINE_TABLES:     # the trader's tables (the gateway never reads the ledger)
                    if what not in self._trading:
                        self._trading[what] = ENGINE_TABLES[what](b)
                    return self._trading[what]
                if what not in self._rings:
                    self._rings[what] = (CANDLES.open(b.instance, what, b.shm.rows, b.shm.capacity),
                                         INDICATORS.open(b.instance, what, b.shm.rows, b.shm.capacity))
                return self._rings[what]
            except _MISSING:
                return None

    def close(self) -> None:
        with self._lock:
            for t in (self._status, self._symbols, *(t for pair in self._rings.values() for t in pair),
                      *self._trading.values()):
                if t is not None:
                    t.close()
            self._status = self._symbols = None
            self._rings.clear()
            self._trading.clear()

    # -- answers --------------------------------------------------------------------------------------
    def health(self) -> dict:
        """Every program's status row: ``state`` (name), ``pid``, ``heartbeat_age_s`` (seconds since its last
        heartbeat, CLOCK_MONOTONIC), the cumulative counters, ``lag_ms``, ``detail``. ``ok``: every program that
        has a row is RUNNING and beat within the last 5 s."""
        st = self._attach("status")
        if st is None:
            return {"instance": self.base.instance, "available": False, "ok": False, "programs": []}
        now = time.monotonic_ns()
        programs = []
        for name in STATUS_ROWS:
            r = st.read(name)
            if not int(r["pid"]):
                continue     # never started in this instance
            state = State(int(r["state"]))
            age = (now - int(r["heartbeat_ns"])) / 1e9
            programs.append({"name": name, "state": state.name, "pid": int(r["pid"]), "heartbeat_age_s": round(age, 3),
                             "msgs_in": int(r["msgs_in"]), "msgs_out": int(r["msgs_out"]), "errors": int(r["errors"]),
                             "dropped": int(r["dropped"]), "reconnects": int(r["reconnects"]),
                             "lag_ms": int(r["lag_ns"]) / 1e6, "detail": bytes(r["detail"]).decode(errors="replace")})
        ok = bool(programs) and all(p["state"] == "RUNNING" and p["heartbeat_age_s"] < 5.0 for p in programs)
        return {"instance": self.base.instance, "available": True, "ok": ok, "programs": programs}

    def markets(self) -> dict:
        """The symbol manager's table: each market's ``rank`` (0 = not ranked), 24 h traded ``value_24h`` (KRW),
        ``in_universe`` (ingest subscribes it) and ``tradable`` (in the top N the trader may buy); ``version`` is
        the table's, which moves on every write; ``timeframes`` the candle tables kept. Before the symbol manager
        runs: the configured markets, unranked."""
        sym = self._attach("symbols")
        tfs = list(self.base.shm.timeframes)
        if sym is None:
            return {"available": False, "version": -1, "timeframes": tfs,
                    "markets": [{"market": m, "rank": 0, "value_24h": 0.0, "in_universe": True, "tradable": False}
                                for m in self.base.markets]}
        rows, version = sym.read()
        out = [{"market": bytes(r["code"]).decode(), "rank": int(r["rank"]), "value_24h": float(r["value_24h"]),
                "in_universe": bool(int(r["flags"]) & IN_UNIVERSE), "tradable": bool(int(r["flags"]) & TRADABLE)}
               for r in rows]
        return {"available": True, "version": int(version), "timeframes": tfs, "markets": out}

    def candles(self, market: str, tf: str, count: int) -> dict:
        """The newest ``count`` candles of ``market`` in timeframe ``tf`` (oldest first; ``t`` Unix seconds UTC,
        candle start; prices float64 KRW; ``v`` base volume; ``value`` KRW) with their indicator values aligned
        1:1 (None where not computed yet), ``seq`` the candle table's global seq before the read and ``count``
        the candles the row holds. Raises ValueError for a timeframe the instance does not keep and
        :class:`UnknownMarket` for a market without a row."""
        if tf not in self.base.shm.timeframes:
            kept = ", ".join(self.base.shm.timeframes)
            raise ValueError(f"timeframe {tf!r} is not kept here (shm.timeframes: {kept})")
        pair = self._attach(tf)
        if pair is None:
            return {"market": market, "tf": tf, "available": False, "seq": -1, "count": 0, "candles": [],
                    "indicators": []}
        cand, ind = pair
        seq = cand.global_seq
        got = candles_with_indicators(cand, ind, market, count)
        if got is None:
            raise UnknownMarket(f"no candle row holds {market!r}")
        rows, values, total = got
        return {"market": market, "tf": tf, "available": True, "seq": int(seq), "count": int(total), "candles": rows,
                "indicators": values}

    # -- the engine's tables -------------------------------------------------------------------------------
    def engine(self) -> dict:
        """The trader's row: ``mode`` (DISARMED / ARMED / KILLED), ``risk_flags`` by name, the account
        (``cash``, ``equity``, ``realized``, ``unrealized``, ``daily_pnl``, ``fees``, ``hwm`` float64 KRW;
        ``drawdown_pct``), ``reason`` of the last mode change, ``market_ms``, ``age_s`` since the trader wrote it;
        ``version`` the table's. ``available: false`` until the trader runs."""
        t = self._attach("trader")
        if t is None:
            return {"available": False, "mode": None}
        rows, version = t.read_all()
        rec = rows[0]
        d = record_dict(rec)
        d["mode"] = MODE_NAMES.get(d["mode"], str(d["mode"]))
        d["risk_flags"] = [n for bit, n in RISK_FLAG_NAMES.items() if int(rec["risk_flags"]) & bit]
        d["age_s"] = round((time.monotonic_ns() - int(rec["updated_ns"])) / 1e9, 3)
        del d["updated_ns"]
        return {"available": True, "version": int(version), **d}

    def positions(self) -> dict:
        """The open positions: ``code``, ``qty`` (base units), ``avg_price`` / ``cost`` / ``tp`` / ``sl`` /
        ``last_price`` / ``unrealized`` (float64 KRW), ``entry_tag``, ``opened_ms`` (market time), ``exiting``."""
        t = self._attach("positions")
        if t is None:
            return {"available": False, "version": -1, "positions": []}
        rows, version = t.used("code")
        return {"available": True, "version": int(version), "positions": [record_dict(r) for r in rows]}

    def orders(self) -> dict:
        """The open orders and the most recent closed ones, newest first (``identifier``, ``code``, ``side``,
        ``ord_type``, ``price`` / ``avg_fill`` / ``fee`` KRW, ``volume`` / ``filled`` base units, ``state``,
        ``reason``, ``created_ms`` / ``updated_ms`` market time)."""
        t = self._attach("orders")
        if t is None:
            return {"available": False, "version": -1, "orders": []}
        rows, version = t.used("identifier")
        return {"available": True, "version": int(version), "orders": [record_dict(r) for r in rows]}

    def timeline(self, n: int) -> dict:
        """The newest ``n`` entries of the trader's timeline, oldest first: ``wall_ns`` (Unix ns UTC),
        ``market_ms``, ``severity`` (info / warn / alert), ``kind``, ``market``, ``text`` (the why) — the trader's
        own TIMELINE.GET entries (:func:`procs.trading.commands.timeline_entry`); ``count`` the entries written so
        far."""
        t = self._attach("timeline")
        got = t.read_last_of(TIMELINE_ROW, n) if t is not None else None
        if got is None:
            return {"available": False, "count": 0, "timeline": []}
        recs, count = got
        return {"available": True, "count": int(count), "timeline": [timeline_entry(r) for r in recs]}

    # -- cheap looks for the WebSocket poller (one 8-byte load each) ---------------------------------------
    def version(self, table: str) -> int:
        """The version of a trader table (``orders``, ``positions``, ``trader``); -1 while it does not exist."""
        t = self._attach(table)
        return -1 if t is None else int(t.version)

    def timeline_count(self) -> int:
        """Entries written to the trader's timeline so far; -1 while it does not exist."""
        t = self._attach("timeline")
        row = t.row_of(TIMELINE_ROW) if t is not None else None
        return -1 if row is None else int(t.count(row))

    def candle_seq(self, tf: str) -> int:
        """The global seq of ``candles.<tf>``; -1 while it does not exist."""
        pair = self._attach(tf)
        return -1 if pair is None else int(pair[0].global_seq)

    def surge(self, tf: str, rule: SurgeRule) -> dict:
        """Every market of ``candles.<tf>`` judged on its newest candle by ``rule`` (procs/market/surge.py):
        ``return_pct``, ``value_ratio``, ``fired`` (None for a market without a full window and baseline);
        the firing ones first, then by return. ``seq``: the candle table's."""
        pair = self._attach(tf)
        if pair is None:
            return {"tf": tf, "available": False, "seq": -1, "markets": []}
        cand = pair[0]
        seq = cand.global_seq
        need = rule.window + rule.baseline
        out = []
        for market in (n for n in cand.names() if n):
            got = cand.read_last_of(market, need)
            judged = surge_at(got[0], rule) if got is not None else None
            out.append({"market": market, **(judged or {"t": None, "return_pct": None, "value_ratio": None,
                                                       "fired": None})})
        out.sort(key=lambda m: (not m["fired"], -(m["return_pct"] or 0.0)))
        return {"tf": tf, "available": True, "seq": int(seq), "rule": rule.__dict__, "markets": out}
