"""The symbol manager's domain: which markets are safe, which are the top N (writer of ``symbols``).

* Safety filter (:func:`safety_flags`) from ``GET /v1/market/all?is_details=true``: KRW
  markets only; a market with ``market_event.warning`` or any ``market_event.caution`` flag is
  unsafe (flags WARNING / CAUTION in the table) and never tradable. Refreshed every
  ``symbols.safety_interval_s``.
* Ranking: every ``symbols.rank_interval_s`` the safe candidates are ranked by
  ``acc_trade_price_24h`` from ``GET /v1/ticker``.
* Top N with hysteresis (:class:`TopN`): a market joins after it has ranked inside the top N
  for ``min_stable_s`` (and only when there is room); a member leaves after it has ranked
  outside for ``min_stable_s``. A market near the cut therefore does not flap.
* The table: every candidate with its flags, rank and 24 h value; the top N are
  ``IN_UNIVERSE | TRADABLE`` — ingest subscribes to them (it resubscribes when ``version``
  moves) and the trader will buy only from them.

Time: intervals are measured in **market time** (the newest ticker ``trade_timestamp``), so in
the replay profile they scale with the replay speed, and live they are wall time. Candidates:
``symbols.candidates = "config"`` limits them to ``markets.codes`` (the replay serves only
those); ``"all"`` takes every KRW market. The REST calls are functions handed in (the venue
adapter's), raising :class:`~procs.market.types.FetchError`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from shm.symbols import CAUTION, IN_UNIVERSE, TRADABLE, WARNING, SymbolsTable

from ..runtime.config import SymbolsConfig
from .types import Ticker

log = logging.getLogger("smtm.symbols")


def safety_flags(market_all: list[dict]) -> dict[str, int]:
    """KRW market → WARNING/CAUTION flag bits (0 = safe) from a ``market/all?is_details=true`` body."""
    out = {}
    for m in market_all:
        code = m.get("market", "")
        if not code.startswith("KRW-"):
            continue
        ev = m.get("market_event") or {}
        flags = WARNING if ev.get("warning") else 0
        if any(bool(v) for v in (ev.get("caution") or {}).values()):
            flags |= CAUTION
        out[code] = flags
    return out


class TopN:
    """Top-N membership with a minimum stable time (seconds of market time)."""

    def __init__(self, n: int, min_stable_s: float):
        self.n, self.min_stable_s = n, min_stable_s
        self.members: list[str] = []
        self._in_since: dict[str, float] = {}
        self._out_since: dict[str, float] = {}

    def update(self, ranked: list[str], now_s: float) -> list[str]:
        """``ranked``: codes, best first. Returns the members, best first."""
        top = set(ranked[:self.n])
        for c in list(self.members):
            if c in top:
                self._out_since.pop(c, None)
            elif now_s - self._out_since.setdefault(c, now_s) >= self.min_stable_s or c not in ranked:
                self.members.remove(c)
                self._out_since.pop(c, None)
        cold = not self.members and not self._out_since  # start-up: take the top N at once
        for c in ranked[:self.n]:
            if c in self.members:
                continue
            since = self._in_since.setdefault(c, now_s)
            if len(self.members) < self.n and (cold or now_s - since >= self.min_stable_s):
                self.members.append(c)
        for c in list(self._in_since):
            if c not in top or c in self.members:
                del self._in_since[c]
        order = {c: i for i, c in enumerate(ranked)}
        self.members.sort(key=lambda c: order.get(c, len(order)))
        return list(self.members)


class SymbolManager:
    """One :meth:`step` per poll: refresh what is due and write the table. ``market_all()`` and
    ``tickers(codes)`` are the venue adapter's REST calls; ``markets`` is ``markets.codes``.

    ``held()`` gives the markets the trader still holds (an open position or order): one that left
    the top N stays IN_UNIVERSE — subscribed, so its exit can fill and its position stays marked —
    without TRADABLE, until the trader no longer holds it (seed SymbolManager: "excluded markets are
    sold at market and removed")."""

    def __init__(self, cfg: SymbolsConfig, markets: tuple[str, ...], table: SymbolsTable, *,
                 market_all: Callable[[], list[dict]], tickers: Callable[[list[str]], list[Ticker]],
                 held: Callable[[], set[str]] = set):
        self.cfg, self.markets, self.table = cfg, markets, table
        self.market_all, self.fetch_tickers, self.held = market_all, tickers, held
        self._held: set[str] = set()
        self._members: set[str] = set()
        self.top = TopN(cfg.top_n, cfg.min_stable_s)
        self.flags: dict[str, int] = {}
        self.last_safety = self.last_rank = None
        self.market_now_s = 0.0
        self.ranked: list[tuple[str, float]] = []
        self._first_tick_s = 0.0

    def candidates(self) -> list[str]:
        if self.cfg.candidates == "config":
            return [c for c in self.markets if self.flags.get(c, 0) == 0 and c in self.flags]
        return sorted(c for c, f in self.flags.items() if f == 0)

    def refresh_safety(self) -> None:
        self.flags = safety_flags(self.market_all())
        unsafe = sorted(c for c, f in self.flags.items() if f)
        log.info("safety filter: %d KRW markets, %d unsafe", len(self.flags), len(unsafe))

    def step(self) -> bool:
        """One poll: refresh what is due (market time). Returns True if the table was written."""
        sc = self.cfg
        if self.last_safety is None:
            self.refresh_safety()
            self.last_safety = self.market_now_s
        candidates = self.candidates()
        ticks = self.fetch_tickers(candidates)
        if not ticks:
            return False  # nothing has traded yet (a replay waiting for its first subscriber)
        self.market_now_s = max(t.trade_timestamp for t in ticks) / 1000.0
        if self.last_rank is None and len(ticks) < len(candidates):
            # the first ranking takes the top N at once: wait until every candidate has traded (or
            # one rank interval has passed), so the universe does not start from the first few
            self._first_tick_s = self._first_tick_s or self.market_now_s
            if self.market_now_s - self._first_tick_s < sc.rank_interval_s:
                return False
        if self.market_now_s - self.last_safety >= sc.safety_interval_s:
            self.refresh_safety()
            self.last_safety = self.market_now_s
        held = self.held()
        if self.last_rank is not None and self.market_now_s - self.last_rank < sc.rank_interval_s:
            if held == self._held:
                return False
            return self._write(held)          # a held market closed (or a new one is held): rewrite
        self.last_rank = self.market_now_s
        self.ranked = sorted(((t.code, t.acc_trade_price_24h) for t in ticks), key=lambda x: -x[1])
        self._members = set(self.top.update([c for c, _ in self.ranked], self.market_now_s))
        return self._write(held)

    def _write(self, held: set[str]) -> bool:
        self._held = set(held)
        members = self._members
        rows = [(c, (IN_UNIVERSE | TRADABLE) if c in members else IN_UNIVERSE if c in held else 0, i + 1, v)
                for i, (c, v) in enumerate(self.ranked)]
        ranked = {c for c, _ in self.ranked}
        rows += [(c, f | (IN_UNIVERSE if c in held else 0), 0, 0.0) for c, f in sorted(self.flags.items())
                 if f and c not in ranked and (self.cfg.candidates == "all" or c in self.markets)]
        self.table.write(rows[:self.table.n_rows])
        return True
