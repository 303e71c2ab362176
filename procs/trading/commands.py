"""The engine's command API (DESIGN §5, seed master doc §4–§7): each command of the socket mapped to
the engine, its payload validated, its refusals explained. Called on the command server's thread;
the engine serializes with its lock. ``who`` in the audit trail is the peer's pid/uid and run id.

Commands and payloads (``symbol`` is the header's):

=================  ==============================================  =========================================
command            payload                                         ACK payload
=================  ==============================================  =========================================
PING               —                                               ``{"pong": true, "run_id"}``
ENGINE.STATUS      —                                               mode, broker, preset, money, risk, params
SNAPSHOT.GET       ``{"tf"?, "count"?}`` (symbol: the market)      the seed's snapshot document
CONFIG.APPLY       ``{"preset"?, "params"?: {key: value}, "why"?}``  ``{"config_version", "preset", "params"}``
LIVE.ARM / DISARM  ``{"reason"?}``                                 ``{"mode"}``
KILL.SWITCH        ``{"reason"?, "flatten"?: bool}``               ``{"mode", "cancelled": [identifiers]}``
KILL.RESET         ``{"reason"?}``                                 ``{"mode"}``
ORDER.CANCEL       ``{"identifier"}``                              the order
POSITION.EXIT      ``{"market": "KRW-BTC" | "all", "reason"?}``     ``{"orders": [identifiers]}``
POSITIONS.GET      —                                               ``{"positions": [...]}``
ORDERS.GET         ``{"n"?: 1..1000}``                             ``{"orders": [...]}`` newest first
PNL.GET            ``{"by"?: "day" | "market" | "exit_reason"}``    ``{"totals", "by", "rows"}``
TIMELINE.GET       ``{"n"?: 1..1000}``                             ``{"timeline": [...]}`` oldest first
=================  ==============================================  =========================================
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from shm.trading import MODE_NAMES, RISK_FLAG_NAMES, SEVERITY_NAMES, text

from .engine import Engine, Refused
from .portfolio import group_closed
from .protocol import Command, CommandError
from .risk import kst_day

SNAPSHOT_VERSION = 1
#: market_data(market, tf, count) -> (candles as a list of dicts, indicators aligned as a list of dicts)
MarketData = Callable[[str, str, int], tuple[list[dict], list[dict]]]


def _str(payload: dict, key: str, default: str = "", max_len: int = 200) -> str:
    """A string field; control characters become spaces (a reason never forges a log line)."""
    v = payload.get(key, default)
    if not isinstance(v, str) or len(v) > max_len:
        raise CommandError("INVALID", f"payload.{key} must be a string of at most {max_len} characters")
    return "".join(ch if ch.isprintable() else " " for ch in v)


def _int(payload: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = payload.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CommandError("INVALID", f"payload.{key} must be an integer in [{lo}, {hi}]")
    return v


class CommandHandler:
    """``handler(cmd)`` for :class:`procs.trading.server.CommandServer`."""

    def __init__(self, engine: Engine, *, market_data: MarketData, timeline: Callable[[int], list[dict]],
                 health: Callable[[], dict], default_market: str, default_tf: str, timeframes: tuple[str, ...]):
        self.engine = engine
        self.market_data = market_data
        self.timeline = timeline
        self.health = health
        self.default_market = default_market
        self.default_tf = default_tf
        self.timeframes = timeframes
        self.routes: dict[str, Callable[[Command, str], Any]] = {
            "PING": lambda c, w: {"pong": True, "run_id": engine.run_id},
            "ENGINE.STATUS": lambda c, w: self.status(),
            "SNAPSHOT.GET": self.snapshot,
            "CONFIG.APPLY": self.config_apply,
            "LIVE.ARM": lambda c, w: self._mode(engine.arm, c, w),
            "LIVE.DISARM": lambda c, w: self._mode(engine.disarm, c, w),
            "KILL.SWITCH": self.kill,
            "KILL.RESET": lambda c, w: self._mode(engine.kill_reset, c, w),
            "ORDER.CANCEL": self.order_cancel,
            "POSITION.EXIT": self.position_exit,
            "POSITIONS.GET": lambda c, w: {"positions": self.positions()},
            "ORDERS.GET": lambda c, w: {"orders": self.orders(_int(c.payload, "n", 20, 1, 1000))},
            "PNL.GET": self.pnl,
            "TIMELINE.GET": lambda c, w: {"timeline": self.timeline(_int(c.payload, "n", 20, 1, 1000))},
        }

    def __call__(self, cmd: Command) -> Any:
        route = self.routes.get(cmd.type)
        if route is None:
            raise CommandError("UNKNOWN_TYPE", f"{cmd.type!r} is not a command of this engine")
        who = f"{cmd.peer} run {cmd.run_id}"[:120]
        try:
            return route(cmd, who)
        except Refused as e:
            with self.engine.lock:
                self.engine.audit(who, f"refused {cmd.type}", str(cmd.payload)[:200], str(e))
                self.engine.flush()
            raise CommandError("REFUSED", str(e)) from None
        except KeyError as e:
            raise CommandError("NOT_FOUND", str(e.args[0]) if e.args else str(e)) from None

    # -- commands ------------------------------------------------------------------------------
    def _mode(self, fn, cmd: Command, who: str) -> dict:
        fn(who, _str(cmd.payload, "reason", "operator"))
        return {"mode": MODE_NAMES[self.engine.mode]}

    def kill(self, cmd: Command, who: str) -> dict:
        flatten = cmd.payload.get("flatten", False)
        if not isinstance(flatten, bool):
            raise CommandError("INVALID", "payload.flatten must be true or false")
        cancelled = self.engine.kill(who, _str(cmd.payload, "reason", "operator"), flatten=flatten)
        return {"mode": MODE_NAMES[self.engine.mode], "cancelled": cancelled}

    def config_apply(self, cmd: Command, who: str) -> dict:
        p = cmd.payload
        preset = p.get("preset")
        params = p.get("params", {})
        if preset is not None and not isinstance(preset, str):
            raise CommandError("INVALID", "payload.preset must be a preset name")
        if not isinstance(params, dict):
            raise CommandError("INVALID", "payload.params must be an object of strategy parameters")
        if preset is None and not params:
            raise CommandError("INVALID", "CONFIG.APPLY needs payload.preset and/or payload.params")
        try:
            out = self.engine.apply_config(who, preset, params, _str(p, "why", "CONFIG.APPLY"))
        except ValidationError as e:
            errs = "; ".join((f"params.{'.'.join(map(str, er['loc']))}: " if er["loc"] else "")
                             + er["msg"].removeprefix("Value error, ") for er in e.errors())
            raise CommandError("INVALID", errs) from None
        except KeyError as e:
            raise CommandError("INVALID", str(e.args[0])) from None
        return {"config_version": self.engine.config_version, "preset": self.engine.preset, "params": out.model_dump()}

    def order_cancel(self, cmd: Command, who: str) -> dict:
        o = self.engine.cancel_order(_str(cmd.payload, "identifier", max_len=64), who)
        return self.engine.order_view(o)

    def position_exit(self, cmd: Command, who: str) -> dict:
        market = _str(cmd.payload, "market", cmd.symbol or "", max_len=16)
        if not market:
            raise CommandError("INVALID", "payload.market must be a market code or \"all\"")
        limit = cmd.payload.get("price")
        if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0
                                  or limit != limit or limit == float("inf")):
            raise CommandError("INVALID", "payload.price must be a positive KRW price (a limit sell) or absent")
        try:
            return {"orders": self.engine.exit_positions(market, who, _str(cmd.payload, "reason", "operator exit"),
                                                         None if limit is None else float(limit))}
        except ValueError as e:
            raise CommandError("INVALID", str(e)) from None

    # -- views ---------------------------------------------------------------------------------
    def status(self) -> dict:
        e = self.engine
        with e.lock:
            return {"mode": MODE_NAMES[e.mode], "broker": e.broker.name, "preset": e.preset,
                    "config_version": e.config_version, "run_id": e.run_id, **e.money(),
                    "open_positions": e.open_positions, "open_orders": len(e.orders),
                    "risk": {"flags": [n for f, n in RISK_FLAG_NAMES.items() if e.risk_flags & f], "reason": e.reason,
                             "day": e.day, "day_start_equity": e.day_start_equity},
                    "market_ms": e.market_ms, "params": e.params.model_dump(), "decisions": e.decisions,
                    "trades_seen": e.trades_seen, "uncommitted": e.dirty,
                    "tradable": sorted(e.tradable) if e.tradable is not None else None,
                    "reconcile": {"problems": list(e.reconcile_problems), "at_ms": e.reconciled_ms,
                                  "unknown_orders": sum(o.state.value == "unknown" for o in e.orders.values())},
                    "health": self.health()}

    def positions(self) -> list[dict]:
        e = self.engine
        fee = e.cfg.fee_rate
        with e.lock:
            return [{"market": p.market, "qty": p.qty, "avg_price": p.avg_price, "cost": p.cost, "tp": p.tp,
                     "sl": p.sl, "last_price": p.last_price, "unrealized": p.unrealized(fee),
                     "unrealized_pct": p.unrealized(fee) / p.cost * 100 if p.cost else 0.0, "entry_tag": p.entry_tag,
                     "opened_ms": p.opened_ms, "state": p.state, "exiting": e._exit_open(p.market)}
                    for p in e.positions.values()]

    def orders(self, n: int) -> list[dict]:
        e = self.engine
        with e.lock:
            rows = e.ledger.orders(n)
        return [{"identifier": r["identifier"], "market": r["market"], "side": r["side"], "ord_type": r["ord_type"],
                 "price": r["price"], "volume": r["volume"], "filled": r["filled"],
                 "avg_fill": r["filled_krw"] / r["filled"] if r["filled"] else 0.0, "fee": r["fee"],
                 "state": r["state"], "reason": r["reason"] or r["tag"], "tag": r["tag"], "purpose": r["purpose"],
                 "created_ms": r["created_ms"], "updated_ms": r["updated_ms"]} for r in rows]

    def pnl(self, cmd: Command, who: str) -> dict:
        by = cmd.payload.get("by")
        if by not in (None, "day", "market", "exit_reason"):
            raise CommandError("INVALID", "payload.by must be one of day, market, exit_reason (or absent)")
        e = self.engine
        with e.lock:
            closed = e.ledger.positions("closed")
            eq = e.equity
            totals = {"realized": e.realized, "unrealized": e.unrealized, "fees": e.fees, "trades": len(closed),
                      "wins": sum(r["realized"] > 0 for r in closed), "losses": sum(r["realized"] <= 0 for r in closed),
                      "equity": eq, "starting_cash": e.starting_cash,
                      "return_pct": (eq / e.starting_cash - 1) * 100 if e.starting_cash else 0.0}
        totals["win_rate"] = totals["wins"] / totals["trades"] if totals["trades"] else 0.0
        rows = group_closed(closed, lambda r: kst_day(r["closed_ms"]) if by == "day" else r[by]) if by else []
        return {"totals": totals, "by": by, "rows": rows}

    def snapshot(self, cmd: Command, who: str) -> dict:
        """The seed's snapshot: every top-level key always present; candles ascending, indicators aligned
        with them (null where not computable)."""
        market = (cmd.symbol or _str(cmd.payload, "market", "", 16) or self.default_market).upper()
        tf = _str(cmd.payload, "tf", self.default_tf, 4)
        if tf not in self.timeframes:
            raise CommandError("INVALID", f"payload.tf = {tf!r}: allowed values are {', '.join(self.timeframes)}")
        count = _int(cmd.payload, "count", 200, 1, 2000)
        candles, indicators = self.market_data(market, tf, count)
        st = self.status()
        e = self.engine
        pos = next((p for p in self.positions() if p["market"] == market), None)
        return {
            "snapshot_version": SNAPSHOT_VERSION, "ts": time.time(), "run_id": e.run_id, "symbol": market, "tf": tf,
            "config": {"preset": st["preset"], "config_version": st["config_version"], "params": st["params"],
                       "broker": st["broker"], "limits": e.limits().__dict__},
            "mode": st["mode"],
            "health": self.health(),
            "market": {"last_price": e.last_price.get(market), "market_ms": e.market_ms,
                       "tradable": None if e.tradable is None else market in e.tradable},
            "position": pos,
            "risk": {**st["risk"], "equity": st["equity"], "cash": st["cash"], "daily_pnl": st["daily_pnl"],
                     "drawdown_pct": st["drawdown_pct"], "hwm": st["hwm"], "realized": st["realized"],
                     "unrealized": st["unrealized"]},
            "candles": candles,
            "indicators": indicators,
            "recent_orders": self.orders(20),
            "recent_timeline": self.timeline(50),
        }


def timeline_entry(rec) -> dict:
    """A ``timeline.trader`` ring record as a dict (for TIMELINE.GET and the snapshot)."""
    return {"wall_ns": int(rec["wall_ns"]), "market_ms": int(rec["market_ms"]),
            "severity": SEVERITY_NAMES.get(int(rec["severity"]), "info"), "kind": text(rec["kind"]),
            "market": text(rec["market"]), "text": text(rec["text"])}
