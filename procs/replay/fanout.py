"""The replay clock and the fan-out: the tape's events, in time order, to every subscriber.

:class:`Replayer` sends every event of the tape (trades, and tickers of a recording) at ``speed``
replay seconds per wall second, or (``speed = 0``) as fast as the subscribers keep up (each send
waits for the socket to drain). The replay clock starts at the first subscription. It also keeps
what the REST side answers from: the market time of the last trade sent, the partial candle of
each unit, each market's last trade.

A subscriber whose connection dies mid-send (any ConnectionError or a closing transport) is
dropped and logged; the replay goes on. Should the loop itself die, :meth:`run` raises and the
exchange process fails loudly (``procs.replay.__main__``) instead of serving a frozen clock.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import numpy as np

from ..market.tape import ReplayTape
from ..upbit import fields
from .faults import FaultInjector
from .protocol import CANDLE_UNITS, SEND_ERRORS, Client, candle_message, trade_message

log = logging.getLogger("smtm.exchange")


class Replayer:
    """Replay state and the fan-out to :attr:`clients`."""

    def __init__(self, tape: ReplayTape, speed: float, faults: FaultInjector):
        self.tape = tape
        self.speed = float(speed)
        #: trades per wall second (a load generator): > 0 sends the tape's events evenly at this rate whatever
        #: their market time, re-stamped so that market time runs at wall time from where the replay stood
        #: (a storm of the tape's prices at a chosen rate); 0 = paced by ``speed``. The REST side keeps the tape's
        #: own candles: a repair during a rate run fetches history that does not match the streamed candles
        self.rate = 0.0
        self._rate_anchor: tuple[float, int, int] | None = None   # (wall monotonic, event index, market ms)
        self._restamped = False      # a rate run moved market time off the tape's: offset the tape from there on
        self.ts_offset = 0           # ms added to the tape's times after a rate run (never backwards)
        self._epoch = 0              # bumped by every control: a batch in flight ends at the next event
        self.faults = faults
        self.clients: set[Client] = set()
        self.position = 0                      # index of the next event to send
        self.now_ms = tape.start_ms - 1        # market time of the last trade sent (REST completeness)
        self.clock_now = int(tape.clock_ms[0]) if len(tape.clock_ms) else 0  # market time as sent (replay clock)
        self.tape_now = self.clock_now          # the tape's own clock at the last event sent (the speed clock)
        self.started = asyncio.Event()
        self.finished = False
        self.paused = False
        self.messages_sent = 0
        self.frames_gone = 0                   # frames sent to connections that have closed since
        self.clients_dropped = 0
        self._anchor: tuple[float, int] | None = None   # (wall monotonic, replay ms) of the speed clock
        n = len(tape.markets)
        # per market: [t, o, h, l, c, v, value, last_ts] of the open bucket per unit
        self.partial: dict[int, list[list | None]] = {u: [None] * n for u in CANDLE_UNITS}
        self.last_trade: list[dict | None] = [None] * n
        self._prev_close: list[float | None] = [None] * n
        self._day: list[int | None] = [None] * n
        self._last_price: list[float | None] = [None] * n
        self._held: list[dict | None] = [None] * n       # trades held back by the reorder fault
        self.subscription_log: deque = deque(maxlen=100)
        #: every trade, before it is sent: (market, ts ms, price, volume, sequential_id) -> None (order matching)
        self.on_trade = lambda market, ts, price, volume, seq_id: None

    @property
    def frames_sent(self) -> int:
        """Frames sent to every connection so far (``messages_sent`` counts the messages: a frame of a _LIST
        format holds several)."""
        return self.frames_gone + sum(cl.sent for cl in self.clients)

    # -- the clock --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send every event of the tape in order; returns when the tape is exhausted.

        The speed clock is anchored at (wall time, replay time) and re-anchored whenever the
        speed changes or the replay resumes, so changes take effect at once without jumps.
        """
        await self.started.wait()
        tape = self.tape
        tr, clock, kinds, index = tape.trades, tape.clock_ms, tape.kinds, tape.index
        n = len(clock)
        i = self.position
        self._anchor = (time.monotonic(), int(clock[0]) if n else 0)
        while i < n:
            if self.paused:
                await asyncio.sleep(0.02)
                continue
            j = await self._next_batch(clock, i, n)
            if j is None:
                continue
            for cl in self.clients:   # the events due at this moment: one frame per client in a _LIST format
                cl.batching = True
            rate, epoch = self.rate, self._epoch     # a control mid-batch (a send yielded) ends the batch
            restamp = self._rate_anchor if rate > 0 else None
            # one conversion per batch: numpy scalars cost more than the rest of a trade's work
            for e, (ck, kind, ix) in enumerate(zip(clock[i:j].tolist(), kinds[i:j].tolist(), index[i:j].tolist()),
                                               start=i):
                self.tape_now = ck
                if kind == 0:
                    rec = list(tr[ix].tolist())
                    if restamp is not None:   # market time = wall time since the anchor, one event every 1/rate s
                        rec[0] = restamp[2] + int((e - restamp[1]) * 1000.0 / rate)
                        self._restamped = True
                    else:
                        if self._restamped:   # back on the tape's clock after a rate run: never back in time
                            self.ts_offset = max(self.ts_offset, self.clock_now + 1 - rec[0])
                            self._restamped = False
                        rec[0] += self.ts_offset
                    self.clock_now = rec[0]
                    await self._emit(*rec)
                else:
                    if restamp is None:
                        self.clock_now = ck + self.ts_offset
                    await self._emit_ticker(*tape.tickers[ix])
                if self._epoch != epoch:
                    j = e + 1
                    break
            await self._flush()
            self.position = i = j
            await asyncio.sleep(0)  # let REST handlers, controls and new subscribers in
        self.finished = True
        log.info("replay finished: %d events sent", n)

    async def _next_batch(self, clock: np.ndarray, i: int, n: int) -> int | None:
        """End of the next batch of events that are due, or None after sleeping until one is."""
        if self.rate > 0:
            if self._rate_anchor is None:
                self._rate_anchor = (time.monotonic(), i, max(self.clock_now, self.now_ms + 1))
            wall0, e0, _ = self._rate_anchor
            due = e0 + int((time.monotonic() - wall0) * self.rate) + 1
            if due <= i:
                await asyncio.sleep(min(0.05, max(0.0001, (i - due + 1) / self.rate)))
                return None
            return min(n, due, i + 2048)
        if self.speed <= 0:
            return min(n, i + 256)
        wall0, c0 = self._anchor
        due = c0 + (time.monotonic() - wall0) * self.speed * 1000.0
        j = int(np.searchsorted(clock, due, side="right"))
        if j <= i:
            await asyncio.sleep(min(0.05, max(0.0005, (int(clock[i]) - due) / 1000.0 / self.speed)))
            return None
        return min(j, i + 2048)

    def control(self, req: dict) -> None:
        """Change the replay at run time: ``{"speed": x}``, ``{"rate": trades_per_s}`` (see :attr:`rate`),
        ``{"pause": true}``, ``{"resume": true}``.

        Raises ValueError for anything else."""
        if "speed" in req:
            sp = req["speed"]
            if not isinstance(sp, (int, float)) or isinstance(sp, bool) or not (sp >= 0 and sp < 1e9):
                raise ValueError("speed must be a number >= 0 (0 = as fast as consumers keep up)")
            self.speed = float(sp)
            self.rate, self._rate_anchor = 0.0, None
            self._anchor = (time.monotonic(), self.tape_now)
        elif "rate" in req:
            rt = req["rate"]
            if not isinstance(rt, (int, float)) or isinstance(rt, bool) or not (0 <= rt <= 1e7):
                raise ValueError("rate must be a number of trades per second, 0..1e7 (0 = paced by speed)")
            self.rate, self._rate_anchor = float(rt), None
            self._anchor = (time.monotonic(), self.tape_now)
        elif req.get("pause") is True:
            self.paused = True
        elif req.get("resume") is True:
            self.paused = False
            self._anchor = (time.monotonic(), self.tape_now)
            self._rate_anchor = None
        else:
            raise ValueError('expected {"speed": x}, {"rate": x}, {"pause": true} or {"resume": true}')
        self._epoch += 1
        log.info("replay control: %s", req)

    # -- the fan-out -------------------------------------------------------------------------------
    def drop_client(self, cl: Client, why) -> None:
        if cl in self.clients:
            self.clients.discard(cl)
            self.clients_dropped += 1
            log.info("dropping client %s: %r", cl.peer, why)

    async def _flush(self) -> None:
        """End of a batch of events: every client's batched messages go out."""
        for cl in list(self.clients):
            cl.batching = False
            try:
                await cl.flush()
            except SEND_ERRORS as e:  # the connection died under us
                self.drop_client(cl, e)

    async def _emit_ticker(self, mi: int, msg: dict) -> None:
        if self.faults.stalled():
            return
        code = self.tape.markets[mi]
        for cl in list(self.clients):
            try:
                if cl.wants("ticker", code):
                    await cl.send_obj({**msg, "stream_type": "REALTIME"}, fields.TICKER)
                    self.messages_sent += 1
            except SEND_ERRORS as e:  # the connection died under us
                self.drop_client(cl, e)

    def _track(self, mi: int, ts: int, price: float, vol: float) -> float:
        """Update day, last price and partial candles; returns the previous UTC day's close."""
        self.now_ms = ts
        day = ts // 86_400_000
        if self._day[mi] != day:
            self._prev_close[mi] = self._last_price[mi] if self._last_price[mi] is not None else price
            self._day[mi] = day
        self._last_price[mi] = price
        for u in CANDLE_UNITS:
            b = ts // 1000 // (u * 60) * (u * 60)
            p = self.partial[u][mi]
            if p is None or p[0] != b:
                self.partial[u][mi] = [b, price, price, price, price, vol, price * vol, ts]
            else:
                p[2], p[3], p[4] = max(p[2], price), min(p[3], price), price
                p[5] += vol
                p[6] += price * vol
                p[7] = ts
        return self._prev_close[mi]

    def _outgoing(self, mi: int, trade: dict) -> list[dict]:
        """The trade messages to send now, after the reorder and duplicate faults."""
        outgoing = [trade]
        if self.faults.take_reorder() and self._held[mi] is None:
            self._held[mi] = trade          # sent after the next trade of this market
            outgoing = []
        elif self._held[mi] is not None:
            outgoing.append(self._held[mi])
            self._held[mi] = None
        if outgoing and self.faults.take_duplicate():
            outgoing.append(outgoing[0])
        return outgoing

    async def _emit(self, ts: int, price: float, vol: float, bid: int, seq_id: int, mi: int) -> None:
        """Send one trade (the fields of a ``TRADE_DTYPE`` record, in its order) to every subscriber."""
        code = self.tape.markets[mi]
        prev_close = self._track(mi, ts, price, vol)
        self.on_trade(code, ts, price, vol, seq_id)   # orders match before anyone hears of the trade
        trade = trade_message(code, ts, price, vol, bool(bid), seq_id, prev_close)
        self.last_trade[mi] = trade
        if self.faults.stalled():
            return  # connections stay open, nothing is sent: the clients miss these trades
        bad = self.faults.take_malformed()
        outgoing = self._outgoing(mi, trade)
        for cl in list(self.clients):
            try:
                if bad is not None and cl.types:
                    await cl.send_raw(bad)
                if cl.wants("trade", code):
                    for t in outgoing:
                        await cl.send_obj(t, fields.TRADE)
                        self.messages_sent += 1
                for u in CANDLE_UNITS:
                    if cl.types and cl.wants(f"candle.{u}m", code):
                        await cl.send_obj(candle_message(u, code, self.partial[u][mi], "REALTIME"), fields.CANDLE)
                        self.messages_sent += 1
            except SEND_ERRORS as e:  # the connection died under us
                self.drop_client(cl, e)
