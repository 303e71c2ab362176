"""The operator's controls of the engine (a mixin of :class:`procs.trading.engine.Engine`): mode changes
(ARM / DISARM / KILL / KILL.RESET), CONFIG.APPLY, ORDER.CANCEL and POSITION.EXIT, each under the rules
of seed §9 (see :mod:`procs.trading.engine`) and each written to the ``trade_audit``.
"""
from __future__ import annotations

from shm.trading import ALERT, ARMED, DISARMED, INFO, KILLED, MODE_NAMES, RISK_DAILY_LOSS, RISK_DRAWDOWN, WARN

from ..runtime.presets import StrategyParams, resolve
from . import strategy
from .orders import Order


class Refused(Exception):
    """A command the engine's rules refuse (the message says which rule)."""


class Controls:
    def set_mode(self, mode: int, who: str, why: str) -> None:
        self._limits_stale = True
        old, self.mode = self.mode, mode
        self.reason = f"{MODE_NAMES[mode]} by {who.split(' run ')[0]}: {why}"
        self.ledger.put("mode", MODE_NAMES[mode])
        self.audit(who, f"mode {MODE_NAMES[old]} -> {MODE_NAMES[mode]}", "", why)
        self.note("mode", "", ALERT if mode == KILLED else INFO, f"{MODE_NAMES[mode]} by {who}: {why}")
        self.emit(f"MODE.{MODE_NAMES[mode]}", {"mode": MODE_NAMES[mode], "previous": MODE_NAMES[old], "who": who,
                                               "why": why}, None)
        self.flush()

    def arm(self, who: str, why: str) -> None:
        with self.lock:
            if self.mode == KILLED:
                raise Refused("engine is KILLED: KILL.RESET first")
            if self.risk_flags & RISK_DAILY_LOSS:
                raise Refused(f"daily loss limit in force until 00:00 KST: {self.trips.get(str(RISK_DAILY_LOSS), '')}")
            if self.broker.real and self.mode != ARMED:
                problems = self.account_check("ARM")
                if problems:
                    raise Refused(f"reconciliation with the exchange failed: {'; '.join(problems)}"[:500])
            if self.outcome_pending:
                raise Refused("an order's outcome is still unknown (being looked up): ARM once it is resolved")
            if self.risk_flags & RISK_DRAWDOWN:
                self._limits_stale = True
                self.risk_flags &= ~RISK_DRAWDOWN
                self.trips.pop(str(RISK_DRAWDOWN), None)
                self.hwm = self.equity
                self.audit(who, "drawdown acknowledged", f"high-water mark restarts at {self.hwm:,.0f}", why)
                self.note("risk", "", WARN, f"drawdown limit acknowledged by ARM: the high-water mark restarts at "
                                            f"{self.hwm:,.0f} KRW")
            if self.mode != ARMED:
                self.set_mode(ARMED, who, why)
            self.exit_outside_universe()   # a market that left the top N while disarmed is sold now

    def disarm(self, who: str, why: str) -> None:
        with self.lock:
            if self.mode == ARMED:
                self.set_mode(DISARMED, who, why)

    def kill(self, who: str, why: str, flatten: bool = False) -> list[str]:
        """KILL first: the mode changes before anything else, then every open order is cancelled (the
        broker's batch cancel, verified); with ``flatten`` every position is then sold at market — the only
        orders a KILLED engine sends."""
        with self.lock:
            if self.mode != KILLED:
                self.set_mode(KILLED, who, why)
            cancelled = self._cancel_all(f"kill switch ({why})")
            if flatten:
                for p in [p for p in self.positions.values() if p.state == "open"]:
                    self._exit(p, strategy.KILL, "kill", self.last_price.get(p.market, p.avg_price), force=True)
            self.flush()
            return cancelled

    def _cancel_all(self, reason: str) -> list[str]:
        """Cancel every open order; returns the identifiers of those that ended cancelled."""
        orders = list(self.orders.values())
        for ev in self.broker.cancel_all(orders, self.market_ms, reason):
            self._apply(ev)
        return [o.identifier for o in orders if o.state.value == "cancelled"]   # not those that filled meanwhile

    def kill_reset(self, who: str, why: str) -> None:
        with self.lock:
            if self.mode != KILLED:
                raise Refused(f"engine is {MODE_NAMES[self.mode]}, not KILLED")
            self.set_mode(DISARMED, who, why)

    def apply_config(self, who: str, preset: str | None, overrides: dict | None, why: str) -> StrategyParams:
        """Raises Refused while ARMED, KeyError / ValueError for a bad preset or parameter."""
        with self.lock:
            if self.mode == ARMED:
                raise Refused("engine is ARMED: LIVE.DISARM first (the configuration never changes under orders)")
            name = preset or self.preset
            base = {} if preset else self.ledger.get("params_overrides", self.cfg.strategy.overrides())
            merged = {**base, **(overrides or {})}
            params = resolve(name, merged)
            self.preset, self.params = name, params
            self._limits_stale = True
            self.config_version += 1
            for k, v in (("preset", name), ("params_overrides", merged), ("config_version", self.config_version)):
                self.ledger.put(k, v)
            self.audit(who, "config.apply", f"preset {name} v{self.config_version} {merged}", why)
            self.note("config", "", INFO, f"preset {name} v{self.config_version} by {who}")
            self.emit("CONFIG.UPDATED", {"preset": name, "config_version": self.config_version,
                                         "params": params.model_dump()}, None)
            self.flush()
            return params

    def cancel_order(self, identifier: str, who: str) -> Order:
        with self.lock:
            o = self.orders.get(identifier)
            if o is None:
                raise KeyError(f"no open order {identifier!r}")
            self.audit(who, "order.cancel", identifier, "operator")
            for ev in self.broker.cancel(o, self.market_ms, f"cancelled by {who}"):
                self._apply(ev)
            self.flush()
            return o

    def exit_positions(self, market: str, who: str, why: str, limit: float | None = None) -> list[str]:
        """POSITION.EXIT: sell one market's position or all (allowed ARMED or DISARMED, never KILLED), at
        market, or with ``limit`` as a limit order at that price rounded up to Upbit's tick grid."""
        market = "all" if market.lower() == "all" else market.upper()
        with self.lock:
            if self.mode == KILLED:
                raise Refused("engine is KILLED: no order may be sent until KILL.RESET")
            targets = list(self.positions.values()) if market == "all" else \
                [p for m, p in self.positions.items() if m == market]
            if market != "all" and not targets:
                raise KeyError(f"no open position in {market}")
            for p in targets if limit is not None else ():
                last = self.last_price.get(p.market)
                if last and not 0.5 <= limit / last <= 2.0:
                    raise ValueError(f"payload.price {limit:,.8g} is more than 2x away from {p.market}'s last price "
                                     f"{last:,.8g}: not a limit sell anyone means")
            self.audit(who, "position.exit", market, why)
            out = []
            for p in targets:
                if p.state == "open" and not self._exit_open(p.market):
                    ident = self._exit(p, strategy.MANUAL, "command", self.last_price.get(p.market, p.avg_price),
                                       manual=True, limit=limit)
                    if ident:
                        out.append(ident)
            self.flush()
            return out

    @staticmethod
    def order_view(o: Order) -> dict:
        return {"identifier": o.identifier, "market": o.market, "side": o.side, "ord_type": o.ord_type,
                "price": o.price, "volume": o.volume, "filled": o.filled, "avg_fill": o.avg_fill, "fee": o.fee,
                "state": o.state.value, "reason": o.reason or o.tag, "created_ms": o.created_ms,
                "updated_ms": o.updated_ms}
