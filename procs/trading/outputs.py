"""The trader's shared-memory tables (it is their single writer; everyone else reads them read-only):
``trader`` (the engine's state), ``positions``, ``orders`` (open and recent, newest first) and the
``timeline.trader`` ring. Records are described in :mod:`shm.trading`.

:meth:`ShmOutputs.publish` rewrites the small tables from the engine at most every
``min_interval_s`` (and at once when an order changed), so a storm of trades costs a few copies per
frame of the monitor, not one per trade; :meth:`ShmOutputs.timeline` appends one entry at once.
"""
from __future__ import annotations

import time

import numpy as np

from shm.tables import TIMELINE, TIMELINE_ROW
from shm.trading import ORDER_DTYPE, POSITION_DTYPE, TIMELINE_DTYPE, OrdersTable, PositionsTable, TraderTable, fit

from ..runtime.config import BaseConfig
from .engine import Engine


class ShmOutputs:
    def __init__(self, base: BaseConfig, min_interval_s: float = 0.02):
        sh = base.shm
        self.trader = TraderTable.writer(base.instance, 1)
        self.positions = PositionsTable.writer(base.instance, sh.rows)
        self.orders = OrdersTable.writer(base.instance, sh.orders_rows)
        self.ring = TIMELINE.create(base.instance, None, 1, sh.timeline_capacity)
        self.row = self.ring.assign_row(TIMELINE_ROW)
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._rec = np.zeros((), TIMELINE_DTYPE)
        self.writes = 0

    def timeline(self, kind: str, market: str, severity: int, text: str, market_ms: int) -> None:
        r = self._rec
        r["wall_ns"], r["market_ms"], r["severity"] = time.time_ns(), market_ms, severity
        r["kind"], r["market"], r["text"] = fit(kind, 16), fit(market, 16), fit(text, 112)
        self.ring.write(self.row, self.ring.count(self.row), r)
        self.ring.publish()

    def read_timeline(self, n: int) -> np.ndarray:
        recs, _ = self.ring.read_last(self.row, n)
        return recs

    def publish(self, e: Engine, *, orders_changed: bool = False, force: bool = False) -> bool:
        """Write the tables if due; returns True if written."""
        now = time.monotonic()
        if not (force or orders_changed or now - self._last >= self.min_interval_s):
            return False
        self._last = now
        with e.lock:
            self._trader(e)
            self._positions(e)
            if orders_changed or force:
                self._orders(e)
        self.writes += 1
        return True

    def _trader(self, e: Engine) -> None:
        row = np.zeros(1, TraderTable.DTYPE)
        r = row[0]
        r["mode"], r["open_positions"], r["open_orders"], r["risk_flags"] = e.mode, e.open_positions, len(e.orders), \
            e.risk_flags
        r["broker"], r["preset"], r["config_version"] = fit(e.broker.name, 8), fit(e.preset, 16), e.config_version
        for k, v in e.money().items():
            r[k] = v
        r["market_ms"], r["updated_ns"], r["decisions"], r["trades_seen"] = e.market_ms, time.monotonic_ns(), \
            e.decisions, e.trades_seen
        r["reason"] = fit(e.reason, 96)
        self.trader.write_rows(slice(None), row)

    def _positions(self, e: Engine) -> None:
        rows = np.zeros(self.positions.n_rows, POSITION_DTYPE)
        fee = e.cfg.fee_rate
        for i, p in enumerate([p for p in e.positions.values() if p.state == "open"][:len(rows)]):
            rows[i] = (fit(p.market, 16), p.qty, p.avg_price, p.cost, p.tp, p.sl, p.last_price, p.unrealized(fee),
                       fit(p.entry_tag, 24), p.opened_ms, int(e._exit_open(p.market)), b"")
        self.positions.write_rows(slice(None), rows)

    def _orders(self, e: Engine) -> None:
        rows = np.zeros(self.orders.n_rows, ORDER_DTYPE)
        for i, r in enumerate(e.ledger.orders(len(rows))):
            avg = r["filled_krw"] / r["filled"] if r["filled"] else 0.0
            rows[i] = (fit(r["identifier"], 48), fit(r["market"], 16), fit(r["side"], 4), fit(r["ord_type"], 8),
                       r["price"], r["volume"], r["filled"], avg, r["fee"], fit(r["state"], 16),
                       fit(r["reason"] or r["tag"], 48), r["created_ms"], r["updated_ms"])
        self.orders.write_rows(slice(None), rows)

    def close(self) -> None:
        for t in (self.trader, self.positions, self.orders, self.ring):
            t.close()
