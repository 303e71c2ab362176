"""Positions and cash: the accounting of fills (pure, no I/O).

Money is float64 KRW. A buy fill adds ``price x volume`` to the position's quantity at cost
``price x volume + fee``; a sell fill takes its share of the cost out and realizes
``price x volume - fee - cost share`` (average-cost method). So when a position is closed its
realized P&L is exactly ``sell KRW - sell fees - (buy KRW + buy fees)``, which is what the ledger's
fills give back (tests recompute it independently).
"""
from __future__ import annotations

from dataclasses import dataclass

#: A position whose remaining quantity is below this share of what was bought is closed (float dust).
DUST = 1e-9


@dataclass
class Position:
    """One position (its ledger row). ``state``: ``pending`` (entry order open, nothing filled),
    ``open``, ``closed``, ``void`` (the entry never filled)."""
    id: int
    market: str
    state: str
    qty: float = 0.0
    avg_price: float = 0.0      #: KRW, fees excluded
    cost: float = 0.0           #: KRW paid for the quantity held, buy fees included
    tp: float = 0.0             #: take-profit price, KRW
    sl: float = 0.0             #: stop-loss price, KRW
    entry_tag: str = ""
    exit_reason: str = ""
    opened_ms: int = 0
    closed_ms: int = 0
    bought_qty: float = 0.0
    buy_krw: float = 0.0
    sell_krw: float = 0.0
    fees: float = 0.0
    realized: float = 0.0
    last_price: float = 0.0     #: not persisted: the last trade's price

    def buy(self, price: float, volume: float, fee: float, tp_pct: float, sl_pct: float) -> float:
        """Apply a buy fill; returns the cash it took (KRW). TP / SL follow the average price."""
        self.avg_price = (self.avg_price * self.qty + price * volume) / (self.qty + volume)
        self.qty += volume
        self.bought_qty += volume
        self.cost += price * volume + fee
        self.buy_krw += price * volume
        self.fees += fee
        self.tp = self.avg_price * (1 + tp_pct / 100)
        self.sl = self.avg_price * (1 - sl_pct / 100)
        self.state = "open"
        return price * volume + fee

    def sell(self, price: float, volume: float, fee: float, at_ms: int, reason: str) -> tuple[float, float]:
        """Apply a sell fill; returns (cash it brought, realized P&L of this fill). Closes the
        position when what remains is dust."""
        volume = min(volume, self.qty)
        share = volume / self.qty if self.qty > 0 else 1.0
        cost_part = self.cost * share
        proceeds = price * volume - fee
        pnl = proceeds - cost_part
        self.cost -= cost_part
        self.qty -= volume
        self.sell_krw += price * volume
        self.fees += fee
        self.realized += pnl
        if self.qty <= self.bought_qty * DUST:
            self.qty, self.cost, self.state = 0.0, 0.0, "closed"
            self.exit_reason, self.closed_ms = reason, at_ms
        return proceeds, pnl

    def value(self, fee_rate: float) -> float:
        """What selling everything at the last price would bring, after the fee (KRW)."""
        return self.qty * self.last_price * (1 - fee_rate)

    def unrealized(self, fee_rate: float) -> float:
        return self.value(fee_rate) - self.cost if self.qty > 0 else 0.0


def group_closed(closed, key) -> list[dict]:
    """Closed positions (ledger rows or dicts) grouped by ``key(row)``, sorted by group: ``{"key", "trades",
    "wins", "realized", "fees"}`` each (KRW; a win is realized P&L > 0)."""
    rows: dict[str, dict] = {}
    for r in closed:
        k = key(r)
        g = rows.setdefault(k, {"key": k, "trades": 0, "wins": 0, "realized": 0.0, "fees": 0.0})
        g["trades"] += 1
        g["wins"] += r["realized"] > 0
        g["realized"] += r["realized"]
        g["fees"] += r["fees"]
    return [rows[k] for k in sorted(rows)]
