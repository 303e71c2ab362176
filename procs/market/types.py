"""The market's own types: what the venue adapter (``procs.upbit``) turns wire messages into.

Plain named tuples (cheap to build per trade, immutable); numbers already validated by the
adapter: finite, positive prices and volumes, integer times and identifiers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Trade(NamedTuple):
    """One executed trade."""
    code: str               #: market code, e.g. ``"KRW-BTC"``
    ts_ms: int              #: trade time, Unix ms UTC (``trade_timestamp``)
    price: float            #: KRW, finite and > 0
    volume: float           #: base-currency units, finite and > 0 (price x volume finite too)
    bid: int                #: 1 = the taker bought (``ask_bid`` BID), 0 = sold (ASK), -1 = not given
    sequential_id: int      #: the exchange's trade identifier (unique per market; duplicates are dropped)
    server_ms: int | None   #: the exchange's message time, Unix ms UTC, if given (for the lag)


class Ticker(NamedTuple):
    """A market's ticker (WebSocket ``ticker`` or REST ``/v1/ticker``)."""
    code: str
    trade_price: float            #: last price, KRW
    acc_trade_price_24h: float    #: KRW traded over the last 24 h
    acc_trade_volume_24h: float   #: base units traded over the last 24 h
    trade_timestamp: int          #: time of the last trade, Unix ms UTC
    market_state: str | None      #: e.g. ``"ACTIVE"``


@dataclass
class MarketEvents:
    """What one received frame held: trades and tickers to apply, and what was wrong with it
    (``dropped``: reasons of malformed or unknown messages, counted and dropped; ``errors``: the
    exchange's own error messages)."""
    trades: list[Trade] = field(default_factory=list)
    tickers: list[Ticker] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class FetchError(RuntimeError):
    """A history fetch failed for a reason worth retrying (network, rate limit, a bad answer)."""
