"""The engine's restart (a mixin of :class:`procs.trading.engine.Engine`): its whole state rebuilt from the
ledger, the mode rule of seed §9 applied, and the broker asked what became of the ledger's open orders
(none is ever sent again).

* Account, preset and parameters, config version, high-water mark, the KST day and its start equity,
  risk flags and reason, market time and the open (and pending) positions with their last marks come
  from the ledger; a new ledger starts with ``trader.starting_cash``.
* Mode: KILLED stays KILLED (and any order still open is cancelled: a kill that died before its
  cancels); DISARMED stays DISARMED; ARMED comes back ARMED only with ``trader.arm_on_start`` and a
  broker that is not real (paper), else DISARMED.
* Orders: :meth:`~procs.trading.broker.Broker.reconcile` reports what each open order became; a pending
  position whose entry order is gone is void.
"""
from __future__ import annotations

import logging

from shm.trading import ALERT, ARMED, DISARMED, INFO, KILLED, MODE_NAMES

from ..runtime.presets import StrategyParams, resolve
from .orders import Order, OrderState
from .portfolio import Position

log = logging.getLogger("smtm.trader")


class Recovery:
    def _load(self) -> None:
        """Rebuild everything from the ledger (a new ledger starts with ``starting_cash``)."""
        lg, cfg = self.ledger, self.cfg
        acct = lg.account()
        fresh = acct is None
        if fresh:
            cash = cfg.starting_cash
            if self.broker.real:    # a new ledger starts from the exchange account's KRW
                cash = self.broker.starting_cash()
                if cash is None:
                    raise RuntimeError(f"a new ledger with the {self.broker.name} broker starts from the exchange "
                                       f"account's KRW, which cannot be read (see the error above; keys in "
                                       f"UPBIT_ACCESS_KEY / UPBIT_SECRET_KEY?)")
            lg.set_account(cash, 0.0, 0.0)
            lg.put("starting_cash", cash)
            acct = (cash, 0.0, 0.0)
        self.cash, self.realized, self.fees = acct
        self.starting_cash = lg.get("starting_cash", cfg.starting_cash)
        self.preset = lg.get("preset", cfg.preset)
        self.params: StrategyParams = resolve(self.preset, lg.get("params_overrides", cfg.strategy.overrides()))
        if self.params != cfg.params():
            log.warning("the ledger's configuration (preset %s v%s, applied by CONFIG.APPLY) is used, not the TOML's "
                        "(preset %s): apply a preset to change it", self.preset, lg.get("config_version", 1),
                        cfg.preset)
        self.config_version = lg.get("config_version", 1)
        self.hwm = lg.get("hwm", self.cash)
        self.day, self.day_start_equity = lg.get("day", ""), lg.get("day_start_equity", self.cash)
        self.risk_flags, self.reason = lg.get("risk_flags", 0), lg.get("reason", "")
        self.trips: dict[str, str] = lg.get("trips", {})   # risk flag (as text) -> why it tripped
        self.market_ms = lg.get("market_ms", 0)
        marks = lg.get("marks", {})
        for r in lg.positions("open") + lg.positions("pending"):
            p = Position(**dict(r))
            p.last_price = marks.get(p.market, p.avg_price)   # the last trade seen before the restart
            self.positions[p.market] = p
            self.last_price[p.market] = p.last_price
        stored = lg.get("mode", None)
        self.mode = self._start_mode(stored, fresh)
        self.ledger.audit(self.wall_ns(), self.market_ms, "trader", "start",
                          f"mode {MODE_NAMES[self.mode]} (ledger: {stored or 'new'}), broker {self.broker.name}, "
                          f"run {self.run_id}", "process start")
        lg.put("mode", MODE_NAMES[self.mode])
        if stored == "ARMED" and self.mode == DISARMED:
            self.reason = ("DISARMED at start: a real broker is never ARMED at start" if self.broker.real
                           else "DISARMED at start (trader.arm_on_start = false)")
        if cfg.arm_on_start and self.broker.real and self.mode != KILLED:
            self.note("mode", "", INFO, f"trader.arm_on_start is ignored: the {self.broker.name} broker sends real "
                                        f"orders, so the trader starts DISARMED (smtm arm once reconciled)")
        self._reconcile([self._order_from_row(r) for r in lg.open_orders()])
        if self.mode == KILLED:
            self._cancel_all("KILLED before the restart")   # a kill that died before its cancels
        if self.broker.real:
            self.account_check("start")
        self.flush()

    def _start_mode(self, stored: str | None, fresh: bool) -> int:
        may_arm = self.cfg.arm_on_start and not self.broker.real
        if stored == "KILLED":
            return KILLED
        if (fresh or stored == "ARMED") and may_arm:
            return ARMED
        return DISARMED

    def _order_from_row(self, r) -> Order:
        o = Order(**{k: r[k] for k in ("identifier", "market", "side", "ord_type", "price", "volume", "purpose", "tag",
                                       "position_id", "created_ms", "updated_ms", "filled", "filled_krw", "fee",
                                       "reason", "broker_id", "wall_ns")})
        o.state = OrderState(r["state"])
        return o

    def _reconcile(self, open_orders: list[Order]) -> None:
        """Restart: the broker says what became of the ledger's open orders (none is sent again)."""
        for o in open_orders:
            self.orders[o.identifier] = o
        known = {o.identifier: self.ledger.fill_ids(o.identifier) for o in open_orders}
        for ev in self.broker.reconcile(open_orders, self.market_ms, known):
            self._apply(ev)
        for m, p in list(self.positions.items()):
            if p.state == "pending" and not any(o.market == m for o in self.orders.values()):
                p.state = "void"
                self.ledger.save_position(p)
                del self.positions[m]
        if open_orders:
            self.note("reconcile", "", INFO, f"{len(open_orders)} open orders in the ledger; "
                                             f"{len(self.orders)} still open at the broker")

    def _ledger_state(self, identifier: str) -> str | None:
        row = self.ledger.order(identifier)
        return row["state"] if row is not None else None

    def account_check(self, why: str) -> list[str]:
        """Reconciliation with a real broker's account (on start, before ARM, after a reconnect): orders the
        ledger does not know, balances that differ, fees or minimums that differ. Any problem keeps the engine
        DISARMED (an ARMED one is disarmed) with the reason on the timeline and in ENGINE.STATUS."""
        for _ in range(3):   # open orders may fill between our reads: only a difference that stays counts
            for ev in self.broker.refresh_all(self.market_ms):
                self._apply(ev)
            holdings = {m: p.qty for m, p in self.positions.items() if p.qty > 0}
            prices = {m: self.last_price.get(m, p.avg_price) for m, p in self.positions.items()}
            problems = self.broker.check_account(self.cash, holdings, prices, self._ledger_state)
            if not problems or not self.orders:
                break
        self.reconcile_problems = problems
        self.reconciled_ms = self.market_ms
        if problems:
            text = f"reconciliation ({why}) found {len(problems)} problem(s): " + "; ".join(problems)
            self.note("reconcile", "", ALERT, text[:400])
            self.audit("trader", "reconcile", "; ".join(problems)[:2000], why)
            if self.mode == ARMED:
                self.set_mode(DISARMED, "reconcile", problems[0])
            else:
                self.reason = f"reconciliation: {problems[0]}"
        else:
            self.note("reconcile", "", INFO, f"reconciliation ({why}): the exchange's orders and balances match "
                                             f"the ledger")
        return problems
