"""trader — the engine: strategy, risk, orders, ledger, ARM/DISARM/KILL, command socket (wiring only).

Domain code lives in :mod:`procs.trading`: the engine (:mod:`~procs.trading.engine`) is fed from shared
memory by :class:`~procs.trading.inputs.ShmInputs` (trades in the order ingest received them, each candle
close right after the trade that closed it, with indicators it computes itself; the tradable top N), keeps
its state in the SQLite ledger (``run/<instance>/ledger.sqlite``; ``ledger-upbit.sqlite`` for the Upbit broker),
sends orders to the broker (the paper broker, :mod:`~procs.trading.broker`, or the Upbit broker,
:mod:`~procs.trading.upbit_broker`), writes the ``trader`` / ``positions`` /
``orders`` / ``timeline.trader`` tables (:class:`~procs.trading.outputs.ShmOutputs`) and answers
commands on ``run/<instance>/trader.sock`` (:mod:`~procs.trading.server`, :mod:`~procs.trading.commands`).

Woken by ingest (every trade) with the adaptive spin-then-park strategy (:class:`shm.wake.PhasedWait`,
``trader.spin_us`` the longest spin); a new ranking of the
symbol manager is seen within ``trader.park_timeout_s``. Latency figures (trade received by ingest → order
at the broker, and → every candle-close decision) are kept and shown in the status row and ENGINE.STATUS ``health``.
"""
from __future__ import annotations

from shm.status import State
from shm.wake import PhasedWait, open_semaphore

from .runtime.config import BaseConfig, IndicatorConfig, TraderConfig, UpbitConfig
from .runtime.endpoints import UpbitUrls
from .runtime.process import Process, start
from .runtime.stamps import LatencyLog
from .trading.commands import CommandHandler, timeline_entry
from .trading.engine import Engine
from .trading.fills import FillModel
from .trading.inputs import ShmInputs
from .trading.latency import LatencyProbe, TimedPaperBroker, TimedUpbitBroker
from .trading.ledger import Ledger, ledger_path
from .trading.outputs import ShmOutputs
from .trading.server import CommandServer
from .upbit.exchange import Credentials, ExchangeClient
from .upbit.rest import RateLimiter


class TraderProcess(Process):
    name = "trader"

    def __init__(self, base: BaseConfig, cfg: TraderConfig, signal_tf: str, monitor_market: str,
                 upbit: UpbitConfig | None = None, indicators: IndicatorConfig | None = None, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.inputs = ShmInputs(base, signal_tf, indicators)
        self.outputs = ShmOutputs(base)
        self.probe = LatencyProbe()
        self.inputs.probe = self.probe
        self.latency = LatencyLog(base, self.name)
        if self.latency.enabled:
            self.inputs.stage = self.latency.stage("frame -> trader decision")
        self.ledger = Ledger(ledger_path(base.run_dir, cfg.broker))
        broker = self._broker(upbit or UpbitConfig())
        self.server: CommandServer | None = None
        self.engine = Engine(cfg, self.ledger, broker, wall_ns=self.clock.time_ns, timeline=self.outputs.timeline,
                             emit=self._emit)
        self.handler = CommandHandler(self.engine, market_data=self.inputs.market_data, timeline=self._timeline,
                                      health=self._health, default_market=monitor_market, default_tf=signal_tf,
                                      timeframes=base.shm.timeframes)
        self.waiter = PhasedWait(open_semaphore(base.instance, self.name), self.row, spin_us=cfg.spin_us,
                                   park_timeout_s=cfg.park_timeout_s)
        self._orders_version = -1
        self._updated: dict[str, float] = {}
        self._status_at = 0.0
        self._flushed = 0.0

    def _broker(self, upbit: UpbitConfig):
        """The paper broker, or the Upbit broker (keys from the environment only; the replay exchange's address
        when ``upbit.rest_url = "auto"``)."""
        c = self.cfg
        if c.broker == "paper":
            return TimedPaperBroker(FillModel(c.fee_rate, c.slippage_pct), self.inputs, self.probe)
        urls = UpbitUrls(upbit.ws_url, upbit.rest_url, self.base.run_dir)
        client = ExchangeClient(urls.rest, Credentials.from_env(), RateLimiter(clock=self.clock.monotonic),
                                connect_timeout_s=c.upbit.connect_timeout_s, timeout_s=c.upbit.order_timeout_s)
        self.log.info("Upbit broker: %s, keys %s", urls.describe(), "present" if client.creds else "MISSING")
        return TimedUpbitBroker(client, c.upbit, fee_rate=c.fee_rate, min_order_krw=c.min_order_krw,
                                markets=self.base.markets, wall_ns=self.clock.time_ns, inputs=self.inputs,
                                probe=self.probe)

    def _emit(self, kind: str, payload: dict, symbol: str | None) -> None:
        """An event to the EVENT.SUBSCRIBE clients (never raises into the engine: a payload that cannot be
        encoded is logged and dropped)."""
        if self.server is not None and self.server.subscribers:
            try:
                self.server.publish(kind, payload, symbol)
            except (TypeError, ValueError) as e:
                self.log.error("event %s not sent: %s", kind, e)

    def _timeline(self, n: int) -> list[dict]:
        return [timeline_entry(r) for r in self.outputs.read_timeline(n)]

    def _health(self) -> dict:
        return {"trader": self.state.name, "trades_missed": self.inputs.missed, "read_waits": self.inputs.read_waits,
                "indicator_rebuilds": self.inputs.rebuilds,
                "latency_order": LatencyProbe.summary(self.probe.orders),
                "latency_decision": LatencyProbe.summary(self.probe.decisions),
                "order_round_trip": LatencyProbe.summary(self.engine.broker.round_trips_us),
                "subscribers": self.server.subscribers if self.server else 0}

    # -- lifecycle --------------------------------------------------------------------------------
    def on_start(self) -> None:
        c = self.cfg
        self.server = CommandServer(self.base.run_dir / "trader.sock", self.handler, run_id=self.engine.run_id,
                                    max_frame_bytes=c.max_frame_bytes, max_clients=c.max_clients,
                                    subscriber_queue=c.subscriber_queue, log=self.log)
        self.server.start()
        self.outputs.publish(self.engine, force=True)
        self.log.info("engine %s, preset %s v%d, broker %s, socket %s", self.engine.mode_name, self.engine.preset,
                      self.engine.config_version, self.engine.broker.name, self.server.path)
        while not self.stopping:
            missing = self.inputs.attach()
            if not missing:
                break
            self.row.detail = missing[:88]
            self.set_state(State.DISCONNECTED)
            self.idle(0.2)

    def on_tick(self) -> None:
        e = self.engine
        if self.waiter.wait(self.inputs.changed):
            self.row.msgs_in += self.inputs.poll(e)
        e.poll_broker()
        now = self.clock.monotonic()
        if e.dirty and now - self._flushed >= self.cfg.commit_interval_s:
            with e.lock:   # group commit of evaluations and marks (orders commit at once, before the broker)
                e.flush()
            self._flushed = now
        version = e.orders_version     # read once: a change made meanwhile is published next time
        self.outputs.publish(e, orders_changed=version != self._orders_version)
        self._orders_version = version
        self._market_events()
        self.set_state(State.RUNNING)

    def _market_events(self) -> None:
        """DATA.CANDLE.CLOSE + INDICATOR.UPDATE for each candle evaluated, DATA.CANDLE.UPDATE (at most
        every 250 ms per market) for open candles — only while someone subscribes."""
        inp = self.inputs
        if self.server is None or not self.server.subscribers:
            inp.touched.clear()
            inp.closed.clear()
            return
        for market, candle, ind in inp.closed:
            self._emit("DATA.CANDLE.CLOSE", {"tf": inp.tf, "candle": candle}, market)
            self._emit("INDICATOR.UPDATE", {"tf": inp.tf, "t": candle["t"], "values": ind}, market)
        inp.closed.clear()
        now = self.clock.monotonic()
        for market in inp.touched:
            if now - self._updated.get(market, 0.0) >= 0.25:
                self._updated[market] = now
                candle = inp.last_candle(market)
                if candle is not None:
                    self._emit("DATA.CANDLE.UPDATE", {"tf": inp.tf, "candle": candle}, market)
        inp.touched.clear()

    def on_beat(self) -> None:
        e, row = self.engine, self.row
        row.msgs_out = len(self.probe.orders)
        row.errors = e.illegal
        row.dropped = self.inputs.missed
        row.lag_ns = self.inputs.lag_ns
        lat = LatencyProbe.summary(LatencyProbe.recent(self.probe.decisions))
        p = f" p50={lat['p50_us']:.0f}us p99={lat['p99_us']:.0f}us" if lat["n"] else ""
        with e.lock:
            mode, equity, npos, nord, market_ms = e.mode_name, e.equity, e.open_positions, len(e.orders), e.market_ms
        problems = e.reconcile_problems
        row.detail = (f"{mode} RECONCILE: {problems[0]}" if problems else f"{mode} eq={equity:,.0f} pos={npos} "
                                                                          f"ord={nord}{p}")[:88]
        self._emit("EVT.HEARTBEAT", {"mode": mode, "market_ms": market_ms, "equity": equity}, None)
        if self.clock.monotonic() - self._status_at >= 1.0 and self.server is not None and self.server.subscribers:
            self._status_at = self.clock.monotonic()
            self._emit("ENGINE.STATUS.UPDATE", self.handler.status(), None)

    def on_stop(self) -> None:
        if self.latency.enabled:
            self.latency.stage("frame -> candle-close decision").extend(self.probe.decisions)
            self.latency.stage("frame -> order at the broker").extend(self.probe.orders)
            self.latency.write()
        if self.server is not None:
            self.server.stop()
        with self.engine.lock:
            self.engine.flush()
            self.outputs.publish(self.engine, force=True)
            self.ledger.close()
        self.inputs.close()
        self.log.info("stopped: %d trades seen, %d decisions", self.engine.trades_seen, self.engine.decisions)


def main(argv: list[str] | None = None) -> int:
    cfg, _ = start("trader", "the engine: strategy, risk, orders, ledger, command socket", argv)
    if cfg is None:
        return 2
    return TraderProcess(cfg.base, cfg.trader, cfg.signal_timeframe, cfg.monitor.market, cfg.upbit,
                         indicators=cfg.indicator).run()


if __name__ == "__main__":
    raise SystemExit(main())
