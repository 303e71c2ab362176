"""Upbit WebSocket field names: DEFAULT ↔ SIMPLE (PROTOCOL.md §1.5), one place for all.

``to_simple(obj)`` renames a DEFAULT message's keys to the SIMPLE ones of its type;
``to_default(obj)`` does the reverse. Keys without a SIMPLE form are kept as they are.
"""
from __future__ import annotations

COMMON = {"type": "ty", "code": "cd", "timestamp": "tms", "stream_type": "st"}

TRADE = {**COMMON, "trade_date": "td", "trade_time": "ttm", "trade_timestamp": "ttms", "trade_price": "tp",
         "trade_volume": "tv", "ask_bid": "ab", "prev_closing_price": "pcp", "change": "c", "change_price": "cp",
         "sequential_id": "sid", "best_ask_price": "bap", "best_ask_size": "bas", "best_bid_price": "bbp",
         "best_bid_size": "bbs"}

TICKER = {**COMMON, "opening_price": "op", "high_price": "hp", "low_price": "lp", "trade_price": "tp",
          "prev_closing_price": "pcp", "change": "c", "change_price": "cp", "signed_change_price": "scp",
          "change_rate": "cr", "signed_change_rate": "scr", "trade_volume": "tv", "acc_trade_volume": "atv",
          "acc_trade_volume_24h": "atv24h", "acc_trade_price": "atp", "acc_trade_price_24h": "atp24h",
          "trade_date": "tdt", "trade_time": "ttm", "trade_timestamp": "ttms", "ask_bid": "ab",
          "acc_ask_volume": "aav", "acc_bid_volume": "abv", "highest_52_week_price": "h52wp",
          "highest_52_week_date": "h52wdt", "lowest_52_week_price": "l52wp", "lowest_52_week_date": "l52wdt",
          "market_state": "ms", "is_trading_suspended": "its", "delisting_date": "dd", "market_warning": "mw"}

CANDLE = {**COMMON, "candle_date_time_utc": "cdttmu", "candle_date_time_kst": "cdttmk", "opening_price": "op",
          "high_price": "hp", "low_price": "lp", "trade_price": "tp", "candle_acc_trade_volume": "catv",
          "candle_acc_trade_price": "catp"}

BY_TYPE = {"trade": TRADE, "ticker": TICKER}
_REVERSE = {ty: {v: k for k, v in m.items()} for ty, m in BY_TYPE.items()}
_REVERSE_CANDLE = {v: k for k, v in CANDLE.items()}


def keymap(ty: str) -> dict[str, str]:
    """DEFAULT → SIMPLE keys of a message type (``candle.*`` share one map)."""
    return CANDLE if ty.startswith("candle.") else BY_TYPE.get(ty, COMMON)


def to_simple(obj: dict) -> dict:
    m = keymap(obj.get("type", ""))
    return {m.get(k, k): v for k, v in obj.items()}


def to_default(obj: dict) -> dict:
    ty = obj.get("ty", "")
    rev = _REVERSE_CANDLE if ty.startswith("candle.") else _REVERSE.get(ty, {v: k for k, v in COMMON.items()})
    return {rev.get(k, k): v for k, v in obj.items()}
