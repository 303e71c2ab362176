"""symbols — the symbol manager process (wiring only): :mod:`procs.market.universe` polled every
``symbols.poll_s`` through the venue adapter's REST client; writer of the ``symbols`` table.
REST failures leave it up and DISCONNECTED until the next poll succeeds."""
from __future__ import annotations

from shm.segment import ShmError
from shm.status import State
from shm.symbols import SymbolsTable
from shm.trading import OPEN_STATES, OrdersTable, PositionsTable, text

from .market.types import FetchError
from .market.universe import SymbolManager
from .runtime.config import BaseConfig, SymbolsConfig, UpbitConfig
from .runtime.endpoints import EndpointUnavailable, UpbitUrls
from .runtime.process import Process, start
from .upbit.rest import RateLimiter, RestClient


class SymbolsProcess(Process):
    name = "symbols"

    def __init__(self, base: BaseConfig, upbit: UpbitConfig, cfg: SymbolsConfig, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.urls = UpbitUrls(upbit.ws_url, upbit.rest_url, base.run_dir)
        rest = RestClient(self.urls.rest, RateLimiter(clock=self.clock.monotonic))
        self.manager = SymbolManager(cfg, base.markets, SymbolsTable.writer(base.instance, base.shm.rows),
                                     market_all=rest.market_all, tickers=rest.tickers, held=self._held)
        self._positions: PositionsTable | None = None
        self._orders: OrdersTable | None = None

    def _held(self) -> set[str]:
        """Markets the trader holds: an open position or an open order (its tables, read-only; empty
        while there is no trader)."""
        b = self.base
        try:
            self._positions = self._positions or PositionsTable.open(b.instance, b.shm.rows)
            self._orders = self._orders or OrdersTable.open(b.instance, b.shm.orders_rows)
        except ShmError:
            return set()
        pos = {text(c) for c in self._positions.open_positions()["code"]}
        orders = self._orders.recent()
        return pos | {text(o["code"]) for o in orders if text(o["state"]) in OPEN_STATES}

    def on_start(self) -> None:
        """Wait (STARTING) until the REST address is known: the replay exchange publishes it."""
        while not self.stopping:
            try:
                self.urls.rest()
                return
            except EndpointUnavailable as e:
                self.row.detail = str(e)[:88]
                self.idle(0.2)

    def on_tick(self) -> None:
        try:
            if self.manager.step():
                self.row.msgs_out += 1
            self.set_state(State.RUNNING)
        except FetchError as e:
            self.row.errors += 1
            self.set_state(State.DISCONNECTED)
            self.log.warning("REST failed: %s", e)
        self.idle(self.cfg.poll_s)

    def on_beat(self) -> None:
        top = self.manager.top.members
        self.row.detail = f"top {len(top)}: {','.join(c[4:] for c in top)}"[:88]


def main(argv: list[str] | None = None) -> int:
    cfg, _ = start("symbols", "safety filter and 24 h top-N ranking → the symbols table", argv)
    return 2 if cfg is None else SymbolsProcess(cfg.base, cfg.upbit, cfg.symbols).run()


if __name__ == "__main__":
    raise SystemExit(main())
