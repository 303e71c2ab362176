"""``python -m procs.replay`` — the replay exchange as a supervised program (status row ``exchange``).

Builds the tape (the bundled real candles, or ``exchange.recording``), serves it on loopback
(:mod:`.server`) and publishes the port it got in ``run/<instance>/exchange.json``
(:mod:`procs.runtime.endpoints`), where ingest, symbols and ``smtm`` find it. The asyncio loop is
the work loop of the common runtime: SIGTERM stops it cleanly; a replay loop that dies makes the
process FAILED and exit 1 (supervisord restarts it).
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from ..market.tape import ReplayTape, load_market_all
from ..runtime.config import ROOT, BaseConfig, ExchangeConfig
from ..runtime.endpoints import publish, withdraw
from ..runtime.process import Process, start
from ..trading.fills import FillModel
from .recording import expand, tape_from_recording
from .server import ReplayExchange, serve


def _day(s: str) -> int | None:
    """'YYYY-MM-DD' (UTC) → Unix s; '' → None."""
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()) if s else None


class ExchangeProcess(Process):
    name = "exchange"

    def __init__(self, base: BaseConfig, cfg: ExchangeConfig, data_path, *, speed: float | None = None,
                 port: int | None = None, recording: str | None = None, fee_rate: float = 0.0005,
                 slippage_pct: float = 0.05, **kw):
        super().__init__(base, **kw)
        self.cfg = cfg
        self.fee_rate, self.slippage_pct = fee_rate, slippage_pct   # the paper broker's, so both fill alike
        self.data_path = data_path
        self.speed = cfg.speed if speed is None else speed
        self.port = cfg.port if port is None else port
        self.recording = recording or cfg.recording
        self.exchange: ReplayExchange | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_async: asyncio.Event | None = None

    def on_start(self) -> None:
        """Build the tape (inside the lifecycle: a failure here is FAILED, not a stuck STARTING)."""
        t0 = time.monotonic()
        if self.recording:
            files = expand(self.recording, ROOT)
            tape = tape_from_recording(files)
            self.log.info("replaying a recording: %d files, %d trades, %d tickers, %d markets", len(files),
                          len(tape.trades), len(tape.tickers), len(tape.markets))
        else:
            cfg = self.cfg
            tape = ReplayTape.build(self.data_path, self.base.markets, cfg.trades_per_candle, _day(cfg.start),
                                    _day(cfg.end))
        if not len(tape.clock_ms):
            raise ValueError(f"nothing to replay: no messages in {self.recording}" if self.recording else
                             f"nothing to replay: no candles of {', '.join(self.base.markets)} between "
                             f"exchange.start = {self.cfg.start!r} and exchange.end = {self.cfg.end!r}")
        self.log.info("tape built in %.2f s: %s", time.monotonic() - t0,
                      ", ".join(f"{m} {len(c)} candles" for m, c in tape.candles.items()))
        cfg = self.cfg
        self.exchange = ReplayExchange(tape, load_market_all(self.data_path), self.speed, cfg.rest_per_second,
                                       account_krw=cfg.account_krw,
                                       keys={cfg.access_key: (cfg.secret_key, ("view", "order"))},
                                       fill_model=FillModel(self.fee_rate, self.slippage_pct))
        self.exchange.replayer.rate = cfg.rate

    def on_tick(self) -> None:  # the asyncio loop below is the work loop
        self.idle(self.heartbeat_s)

    def run_loop(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_async = asyncio.Event()
        if self.stopping:
            return
        beat = asyncio.create_task(self._heartbeats())
        try:
            await serve(self.exchange, self.cfg.host, self.port, self._stop_async,
                        lambda host, port: publish(self.base.run_dir, "exchange", host, port))
        finally:
            beat.cancel()

    async def _heartbeats(self) -> None:
        while True:
            self.heartbeat()
            await asyncio.sleep(self.heartbeat_s)

    def on_beat(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        self.row.msgs_out = ex.replayer.messages_sent
        self.row.msgs_in = ex.subscriptions_received + ex.rest.requests
        self.row.detail = ex.summary()

    def on_stop_requested(self) -> None:
        loop, ev = self._loop, self._stop_async
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    def on_stop(self) -> None:
        withdraw(self.base.run_dir, "exchange")


def main(argv: list[str] | None = None) -> int:
    def add_args(ap):
        ap.add_argument("--speed", type=float, help="replay seconds per wall second; 0 = as fast as consumers keep up")
        ap.add_argument("--port", type=int, help="TCP port on the configured host (loopback; 0 = any free port)")
        ap.add_argument("--recording", help="replay a recording (path or glob) instead of the bundled candles")
    cfg, args = start("exchange", "Upbit-compatible replay exchange on loopback", argv, add_args)
    if cfg is None:
        return 2
    return ExchangeProcess(cfg.base, cfg.exchange, cfg.data_path(), speed=args.speed, port=args.port,
                           recording=args.recording, fee_rate=cfg.trader.fee_rate,
                           slippage_pct=cfg.trader.slippage_pct).run()


if __name__ == "__main__":
    raise SystemExit(main())
