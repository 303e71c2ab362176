"""The engine: the single source of truth of mode, orders, positions, cash and risk (no I/O of its own:
the ledger, the broker, the clock and the outputs are injected).

Inputs (from the trader process, or a backtest): :meth:`Engine.on_trade` (every trade: paper fills,
take-profit / stop-loss, mark-to-market and the risk limits), :meth:`Engine.on_candle_close` (entry
and dead-cross evaluations), :meth:`Engine.on_universe` (the tradable top N); commands through
:mod:`.commands`. Every decision, taken or not, is recorded (``buy_eval`` / ``sell_eval``) and
explained on the timeline.

**Mode** (seed master doc §9), enforced here whatever asks:

* ``DISARMED`` — the strategy runs and records its evaluations, no order is sent (dry-run). The one
  exception is an explicit POSITION.EXIT from the operator (it only reduces risk).
* ``ARMED`` — orders go to the broker.
* ``KILLED`` — open orders cancelled, every new order refused, until KILL.RESET (→ DISARMED).

killed → ARM refused; armed → CONFIG.APPLY refused; DISARM always allowed; KILL always first.
The mode is persisted: KILLED and DISARMED survive any restart; ARMED comes back DISARMED unless
``trader.arm_on_start`` and the broker is not real (paper). Tripping the daily loss limit (per KST
day, persisted) or the drawdown limit cancels open entries, sells every position at market
(``trader.on_risk_trip = "flatten"``; resting limit exits are replaced), disarms the engine and says
why; ARM is refused while the daily limit holds (until 00:00 KST), and ARM after a drawdown trip
restarts the high-water mark from the current equity (recorded in the audit and on the timeline).
A stop-loss replaces a limit exit resting above the market, unless what is left is dust.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from render.text import format_krw
from shm.trading import (
    ALERT,
    ARMED,
    DISARMED,
    INFO,
    KILLED,
    MODE_NAMES,
    RISK_DAILY_LOSS,
    RISK_DRAWDOWN,
    RISK_FLAG_NAMES,
    RISK_MAX_POSITIONS,
    WARN,
)

from ..runtime.config import TraderConfig
from ..runtime.presets import StrategyParams
from . import risk, strategy
from .broker import Broker
from .controls import Controls, Refused
from .execution import Execution
from .orders import Order, OrderState, new_run_id
from .portfolio import Position
from .recovery import Recovery

__all__ = ["Engine", "Refused"]

#: Market time running back more than this (a replay started over) is followed, not ignored.
REWIND_MS = 6 * 3600 * 1000

if TYPE_CHECKING:   # the engine is handed a ledger; it never opens one (no I/O here)
    from .ledger import Ledger

log = logging.getLogger("smtm.trader")


#: timeline(kind, market, severity, text, market_ms)
Timeline = Callable[[str, str, int, str, int], None]
#: emit(event type, payload, market or None)
Emit = Callable[[str, dict, str | None], None]


class Engine(Recovery, Execution, Controls):
    def __init__(self, cfg: TraderConfig, ledger: Ledger, broker: Broker, *, wall_ns: Callable[[], int],
                 timeline: Timeline = lambda *a: None, emit: Emit = lambda *a: None, run_id: str | None = None):
        self.cfg = cfg
        self.ledger = ledger
        self.broker = broker
        self.wall_ns = wall_ns
        self._timeline = timeline
        self.emit = emit
        self.run_id = run_id or new_run_id()
        self.lock = threading.RLock()      # the engine thread and the command thread
        self.recent: deque[dict] = deque(maxlen=256)
        self.orders: dict[str, Order] = {}        # open orders by identifier
        self.positions: dict[str, Position] = {}  # pending / open positions by market
        self.last_price: dict[str, float] = {}
        self.trade_ms: dict[str, int] = {}         # market -> time of its last trade (market ms)
        self.tradable: set[str] | None = None     # None until the symbols table has ranked
        self.market_ms = 0
        self._order_seq = 0
        self.decisions = self.trades_seen = self.duplicate_fills = self.illegal = 0
        self.orders_version = 0   # moves whenever an order is created or changes (the orders table is rewritten)
        self.dirty = False
        self.money_dirty = False   # a fill or order change since the last commit
        self._dry_exits: set[tuple[int, str]] = set()
        self._limits: tuple[StrategyParams, risk.Limits] | None = None
        self._day_ends_ms = 0         # market ms of the next 00:00 KST (the day is rolled when it is reached)
        self._limits_stale = True     # the risk limits must be checked on the next trade whatever it is
        self.reconcile_problems: list[str] = []   # what the last account check could not explain (real broker)
        self.reconciled_ms = 0
        self._load()

    # -- state ----------------------------------------------------------------------------------
    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self.mode]

    @property
    def equity(self) -> float:
        return self.cash + sum(p.value(self.cfg.fee_rate) for p in self.positions.values())

    @property
    def unrealized(self) -> float:
        return sum(p.unrealized(self.cfg.fee_rate) for p in self.positions.values())

    @property
    def outcome_pending(self) -> bool:
        """An order sent whose fate the broker does not know yet (submitted, or unknown and being looked up)."""
        return any(o.state in (OrderState.SUBMITTED, OrderState.UNKNOWN) for o in self.orders.values())

    @property
    def open_positions(self) -> int:
        return sum(p.state == "open" for p in self.positions.values())

    @property
    def available_cash(self) -> float:
        """Cash not promised to an open buy (its remaining KRW and fee): what a new entry may spend."""
        promised = sum(o.remaining * (1 + self.cfg.fee_rate) for o in self.orders.values()
                       if o.side == "bid" and o.ord_type == "price")
        promised += sum(o.remaining * o.price * (1 + self.cfg.fee_rate) for o in self.orders.values()
                        if o.side == "bid" and o.ord_type == "limit")
        return self.cash - promised

    def money(self) -> dict[str, float]:
        """The account in KRW (equity computed once): cash, equity, realized, unrealized, daily_pnl (equity
        against the KST day's start), fees, hwm, drawdown_pct (percent below the high-water mark)."""
        eq = self.equity
        return {"cash": self.cash, "equity": eq, "realized": self.realized, "unrealized": self.unrealized,
                "daily_pnl": eq - self.day_start_equity, "fees": self.fees, "hwm": self.hwm,
                "drawdown_pct": risk.drawdown_pct(eq, self.hwm)}

    def limits(self) -> risk.Limits:
        """The limits in force (built again only when CONFIG.APPLY replaced the parameters: this runs on
        every trade)."""
        if self._limits is None or self._limits[0] is not self.params:
            c, p = self.cfg, self.params
            self._limits = (p, risk.Limits(c.min_order_krw, c.max_order_krw, c.max_market_krw, c.fee_rate,
                                           p.max_positions, p.daily_loss_pct, c.max_drawdown_pct))
        return self._limits[1]

    # -- outputs --------------------------------------------------------------------------------
    def note(self, kind: str, market: str, severity: int, text: str) -> None:
        """One timeline entry: the shm ring (through the injected writer), the recent list, an event."""
        entry = {"wall_ns": self.wall_ns(), "market_ms": self.market_ms, "severity": severity, "kind": kind,
                 "market": market, "text": text}
        self.recent.append(entry)
        self._timeline(kind, market, severity, text, self.market_ms)
        self.emit("TIMELINE.EVENT", entry, market or None)
        if severity >= WARN:
            log.warning("%s %s %s", kind, market, text)

    def audit(self, who: str, action: str, detail: str, why: str) -> None:
        self.ledger.audit(self.wall_ns(), self.market_ms, who, action, detail, why)
        self.dirty = True

    def flush(self) -> None:
        """Persist the account and the risk state and commit (once per batch of inputs)."""
        lg = self.ledger
        lg.set_account(self.cash, self.realized, self.fees)
        for k in ("hwm", "day", "day_start_equity", "risk_flags", "reason", "trips", "market_ms"):
            lg.put(k, getattr(self, k))
        lg.put("marks", {m: p.last_price for m, p in self.positions.items() if p.last_price > 0})
        lg.commit()
        self.dirty = self.money_dirty = False

    # -- inputs ---------------------------------------------------------------------------------
    def on_trade(self, market: str, t_ms: int, price: float, volume: float, trade_id) -> None:
        """One trade of the tape (market time ``t_ms``): fills first (an order never fills on the trade
        that caused it), then take-profit / stop-loss, then mark-to-market and the risk limits."""
        with self.lock:
            self.trades_seen += 1
            rolled = False
            now = self.market_ms
            if t_ms > now or t_ms < now - REWIND_MS:
                if t_ms < now:    # a replay started over under an old ledger
                    self.note("clock", market, WARN, f"market time went back {(now - t_ms) / 3.6e6:,.1f} h "
                                                     f"(a replay restarted): following it")
                    self._day_ends_ms = 0
                self.market_ms = t_ms
                if t_ms >= self._day_ends_ms:
                    self._roll_day()
                    rolled = True
            self.last_price[market] = price
            self.trade_ms[market] = t_ms
            events = self.broker.on_trade(market, t_ms, price, volume, trade_id)
            if events:
                for ev in events:
                    self._apply(ev)
            p = self.positions.get(market)
            if p is not None:
                p.last_price = price
                why = strategy.exit_on_trade(price, p.tp, p.sl) if p.state == "open" else ""
                if why == strategy.STOP_LOSS:
                    self._sell_now(p, why, "trade", price)   # the stop-loss overrides a resting limit exit
                elif why and not self._exit_open(market):
                    self._exit(p, why, "trade", price)
            if p is not None or rolled or self.money_dirty or self._limits_stale:
                self._check_limits()   # else nothing it reads has changed since the last check (same answer)
            if self.money_dirty:      # a fill moved money: committed now (evaluations wait for the group commit)
                self.flush()

    def poll_broker(self) -> None:
        """Every loop: the broker's periodic work (unknown orders resolved, open orders refreshed); after a
        reconnect, the account is checked again."""
        with self.lock:
            for ev in self.broker.poll(self.market_ms):
                self._apply(ev)
            if self.broker.reconnected and not self.outcome_pending:
                self.account_check("reconnect")   # once no order is unknown: until then balances cannot agree
            if self.money_dirty or self.dirty:
                self.flush()

    def acts_on_close(self, market: str) -> bool:
        """Whether :meth:`on_candle_close` of ``market`` would do more than count the decision: the market has
        an open position, or it is tradable. (A backtest computes a market's indicators only when it does.)"""
        p = self.positions.get(market)
        return (p is not None and p.state == "open") or (self.tradable is not None and market in self.tradable)

    def on_candle_close(self, market: str, t_s: int, close: float, prev: dict, cur: dict) -> None:
        """A closed candle of the signal timeframe (start ``t_s``) with its and the previous candle's
        indicator values (dicts of ``shm.tables.INDICATOR_DTYPE`` columns)."""
        with self.lock:
            self.decisions += 1
            p = self.positions.get(market)
            if p is not None and p.state == "open":
                why = strategy.exit_on_close(self.params, prev, cur)
                if why and not self._exit_open(market):
                    self._exit(p, why, "close", close, cur)
                else:
                    self._sell_eval(p, "close", close, cur, why, "exit already open" if why else "hold")
                return
            if self.tradable is None or market not in self.tradable:
                return
            if p is not None:    # the entry order is still filling
                self.ledger.buy_evals([(t_s, market, self.params.rule, "", "pending", "entry order still filling",
                                        *strategy.inputs(prev, cur, close), MODE_NAMES[self.mode], self.wall_ns())])
                return
            rule = strategy.entry_rule(self.params, prev, cur, close)
            decision, reason = self._entry(market, rule, close) if rule else ("none", "no signal")
            self.ledger.buy_evals([(t_s, market, self.params.rule, rule, decision, reason,
                                    *strategy.inputs(prev, cur, close), MODE_NAMES[self.mode], self.wall_ns())])
            self.dirty = True

    def on_universe(self, tradable: set[str]) -> None:
        """The tradable top N changed: a position in a market that left it is sold (or held, per
        ``trader.on_leave``)."""
        with self.lock:
            self.tradable = set(tradable)
            self.exit_outside_universe()

    def exit_outside_universe(self) -> None:
        """Every open position outside the tradable set: sold (once it can be: also after a later ARM),
        or held and said once (``trader.on_leave = "hold"``)."""
        if self.tradable is None:
            return
        for m, p in list(self.positions.items()):
            if p.state != "open" or m in self.tradable or self._exit_open(m):
                continue
            if self.cfg.on_leave == "sell":
                self._exit(p, strategy.LEFT_TOP_N, "universe", self.last_price.get(m, p.avg_price))
            elif (p.id, "hold") not in self._dry_exits:
                self._dry_exits.add((p.id, "hold"))
                self.note("hold", m, INFO, "left the tradable top N; held (trader.on_leave = hold)")

    # -- decisions --------------------------------------------------------------------------------
    def _entry(self, market: str, rule: str, close: float) -> tuple[str, str]:
        """An entry signal: (decision, reason) — ``order`` with its identifier, ``dry_run``, ``denied``."""
        if self.mode == KILLED:
            return "refused", "engine KILLED"
        lim = self.limits()
        cash = self.available_cash
        krw = risk.entry_size(self.equity, cash, self.params.order_share, lim)
        pending = sum(p.state == "pending" for p in self.positions.values())
        held = self.positions.get(market)
        why = risk.check_entry(market=market, krw=krw, cash=cash, open_positions=self.open_positions,
                               pending_entries=pending, has_position=held is not None,
                               has_open_order=any(o.market == market for o in self.orders.values()),
                               held_krw=held.cost if held else 0.0, lim=lim, blocked=self._blocked(),
                               stop_loss_pct=self.params.stop_loss_pct)
        if why:
            self.note("deny", market, WARN, f"buy {krw:,.0f} KRW on {rule} denied: {why}")
            return "denied", why
        if self.mode != ARMED:
            self.note("dry_run", market, INFO, f"{rule} at {format_krw(close)}: would buy {krw:,.0f} KRW (DISARMED)")
            return "dry_run", f"would buy {krw:,.0f} KRW"
        pid = self.ledger.new_position(market, 0.0, 0.0, rule, self.market_ms)
        self.positions[market] = Position(pid, market, "pending", entry_tag=rule, opened_ms=self.market_ms,
                                          last_price=close)
        o = self._order(market, "bid", "price", krw, 0.0, "entry", rule, pid)
        return "order", o.identifier

    def _blocked(self) -> str:
        for flag in (RISK_DAILY_LOSS, RISK_DRAWDOWN):
            if self.risk_flags & flag:
                return f"{RISK_FLAG_NAMES[flag]}: {self.trips.get(str(flag), '')}"
        return ""

    def _exit_open(self, market: str) -> bool:
        return any(o.market == market and o.purpose == "exit" for o in self.orders.values())

    def _exit(self, p: Position, why: str, trigger: str, price: float, ind: dict | None = None,
              manual: bool = False, limit: float | None = None, force: bool = False) -> str:
        """Sell the whole position for ``why`` — at market, or a limit order at ``limit`` rounded up to the
        tick grid; returns the identifier or "". ``force``: KILL's flatten (the one sale a KILLED engine makes)."""
        ind = ind or {}
        if not force and (self.mode == KILLED or (self.mode != ARMED and not manual)):
            if (p.id, why) not in self._dry_exits:   # once per position and reason, not on every trade
                self._dry_exits.add((p.id, why))
                self._sell_eval(p, trigger, price, ind, why, f"dry_run ({MODE_NAMES[self.mode]})")
                self.note("dry_run", p.market, INFO,
                          f"would sell on {why} at {format_krw(price)} ({MODE_NAMES[self.mode]})")
            return ""
        denial = risk.check_exit(volume=p.qty, price=price, has_open_exit=self._exit_open(p.market), lim=self.limits())
        if denial:
            if (p.id, f"deny {why}") not in self._dry_exits:   # said once per position and reason
                self._dry_exits.add((p.id, f"deny {why}"))
                self._sell_eval(p, trigger, price, ind, why, f"denied: {denial}")
                self.note("deny", p.market, WARN, f"sell on {why} denied: {denial}")
            return ""
        for entry in [o for o in self.orders.values() if o.market == p.market and o.purpose == "entry"]:
            # the rest of a partly filled entry is cancelled first: the exit sells what is held
            for ev in self.broker.cancel(entry, self.market_ms, f"exit on {why} before the entry filled"):
                self._apply(ev)
        if limit is None:
            o = self._order(p.market, "ask", "market", 0.0, p.qty, "exit", why, p.id)
        else:
            o = self._order(p.market, "ask", "limit", risk.round_to_tick(limit, "ask"), p.qty, "exit", why, p.id)
        self._sell_eval(p, trigger, price, ind, why, f"order {o.identifier}")
        return o.identifier

    def _sell_now(self, p: Position, why: str, trigger: str, price: float) -> str:
        """Sell at market now: a limit exit resting above the market is cancelled first (a market exit
        already working is left to fill). Only ARMED (a dry-run otherwise, as :meth:`_exit`)."""
        resting = [o for o in self.orders.values() if o.market == p.market and o.purpose == "exit"]
        if any(o.ord_type != "limit" for o in resting):
            return ""
        if resting and p.qty * price < self.cfg.min_order_krw:
            return ""   # what is left could not be sold at market (dust): the resting limit is its only way out
        if resting and self.mode == ARMED:
            for o in resting:
                for ev in self.broker.cancel(o, self.market_ms, f"{why}: replaced by a market sell"):
                    self._apply(ev)
            if any(o.is_open for o in resting):
                return ""
        elif resting:
            return ""
        return self._exit(p, why, trigger, price)

    def _sell_eval(self, p: Position, trigger: str, price: float, ind: dict, why: str, decision: str) -> None:
        self.ledger.sell_evals([(self.market_ms, p.market, p.id, trigger, price, p.tp, p.sl, ind.get("macd"),
                                 ind.get("macd_signal"), why, decision, MODE_NAMES[self.mode], self.wall_ns())])
        self.dirty = True

    # -- risk ---------------------------------------------------------------------------------------
    def _roll_day(self) -> None:
        self._day_ends_ms = risk.kst_day_end_ms(self.market_ms)
        day = risk.kst_day(self.market_ms)
        if day != self.day:
            if self.day and self.risk_flags & RISK_DAILY_LOSS:
                self.note("risk", "", INFO, f"new KST day {day}: the daily loss limit is reset")
            if self.risk_flags & RISK_DAILY_LOSS:
                self.trips.pop(str(RISK_DAILY_LOSS), None)
                if not self.risk_flags & RISK_DRAWDOWN:
                    self.reason = f"daily loss limit reset: new KST day {day}"
            self.day, self.day_start_equity = day, self.equity
            self.risk_flags &= ~RISK_DAILY_LOSS
            self.dirty = True

    def _check_limits(self) -> None:
        self._limits_stale = False
        eq = self.equity
        if eq > self.hwm:
            self.hwm = eq
        lim = self.limits()
        full = self.open_positions >= lim.max_positions
        self.risk_flags = (self.risk_flags | RISK_MAX_POSITIONS) if full else (self.risk_flags & ~RISK_MAX_POSITIONS)
        daily = eq - self.day_start_equity
        if not self.risk_flags & RISK_DAILY_LOSS and risk.daily_loss_tripped(daily, self.day_start_equity, lim):
            self._trip(RISK_DAILY_LOSS, f"daily loss {daily:,.0f} KRW reached -{lim.daily_loss_pct:g} % of "
                                        f"{self.day_start_equity:,.0f} (KST {self.day})")
        dd = risk.drawdown_pct(eq, self.hwm)
        if not self.risk_flags & RISK_DRAWDOWN and dd >= lim.max_drawdown_pct:
            self._trip(RISK_DRAWDOWN, f"drawdown {dd:.2f} % from the high-water mark {self.hwm:,.0f} "
                                      f"reached {lim.max_drawdown_pct:g} %")

    def _trip(self, flag: int, why: str) -> None:
        """A loss limit tripped: entries cancelled, positions sold at market (``trader.on_risk_trip =
        "flatten"``: a disarmed engine would keep them without a stop-loss), then DISARMED."""
        name = RISK_FLAG_NAMES[flag]
        self.risk_flags |= flag
        self.reason = why
        self.trips[str(flag)] = why
        self.audit("risk", f"trip {name}", why, "risk limit")
        self.note("risk", "", ALERT, f"{name} limit: {why}")
        for o in [o for o in self.orders.values() if o.purpose == "entry"]:
            for ev in self.broker.cancel(o, self.market_ms, f"{name} limit"):
                self._apply(ev)
        if self.mode == ARMED and self.cfg.on_risk_trip == "flatten":
            for p in [p for p in self.positions.values() if p.state == "open"]:
                self._sell_now(p, name, "risk", self.last_price.get(p.market, p.avg_price))
        if self.mode == ARMED:
            self.set_mode(DISARMED, "risk", why)
        self.flush()
