"""The paper fill model: how an order fills against the real trade stream (one module, so the paper
broker, the backtest and — next — the replay exchange's matching all fill alike).

Rules, for a trade printed **after** the order was placed (the trade that triggered a decision never
fills the order it caused):

* **Market buy** (``ord_type="price"``, a KRW total): fills at the trade price plus ``slippage_pct``.
* **Market sell** (``"market"``, a volume): fills at the trade price minus ``slippage_pct``.
* **Limit buy** fills only when a trade prints **strictly below** the limit, a **limit sell** only
  strictly above it: a touch is not a fill (the resting queue at that price is assumed ahead of us).
  The fill is at the trade's price — a trade that gaps through the limit fills at that better
  price, as a resting order on the book would.
* **Partial fills**: one trade fills at most its own volume; the rest waits for later trades. A
  market buy's remaining KRW converts at each fill price. Each trade is offered to every open order
  on its own (orders do not compete for a trade's volume: our size is small against the market's).
* **Fees** (``fee_rate`` per side, 0.05 % on Upbit KRW) are charged on each fill's KRW value.

This is the conservative middle of the usual models: freqtrade's dry-run fills limit orders when the
price crosses them and market orders at the current price; nautilus_trader's ``FillModel`` adds
probabilities of a fill on touch and of slippage; backtrader fills market orders on the next bar's
open and limit orders when the bar's range crosses the limit. We fill on the next *trade*, never on a
touch, always with slippage for market orders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


def filled_up(size: float, got: float) -> bool:
    """An order of ``size`` (KRW for a buy by total, base units otherwise) is complete with ``got`` filled: within
    1e-9 of its size, as float sums of fills land. The one rule of the paper broker, the order state machine and
    the replay exchange."""
    return got >= size * (1 - 1e-9)


class Fill(NamedTuple):
    price: float    #: KRW per unit
    volume: float   #: base units
    fee: float      #: KRW


@dataclass(frozen=True)
class FillModel:
    fee_rate: float = 0.0005
    slippage_pct: float = 0.05

    def match(self, side: str, ord_type: str, limit: float, remaining: float, trade_price: float,
              trade_volume: float) -> Fill | None:
        """The fill one trade gives an open order, or None.

        ``remaining``: KRW left for a market buy, base units otherwise; ``limit``: the limit price
        (limit orders only)."""
        if remaining <= 0 or trade_volume <= 0:
            return None
        if ord_type == "limit":
            through = trade_price < limit if side == "bid" else trade_price > limit
            if not through:
                return None
            price, vol = trade_price, min(remaining, trade_volume)
        elif ord_type == "price":
            price = trade_price * (1 + self.slippage_pct / 100)
            vol = min(remaining / price, trade_volume)
        else:
            price = trade_price * (1 - self.slippage_pct / 100)
            vol = min(remaining, trade_volume)
        return Fill(price, vol, price * vol * self.fee_rate)
