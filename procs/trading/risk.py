"""Pre-trade risk: every order the engine wants to send passes :func:`check_entry` or
:func:`check_exit` first; a denied order never reaches the broker (the engine puts the denial on the
timeline). Also Upbit's KRW price grid (:func:`tick_size`, :func:`round_to_tick`) and the daily /
drawdown limits' arithmetic. Pure functions, no I/O.

Sources: Upbit's KRW minimum order (5,000 KRW per order, both sides) and tick table —
``../shared/upbit/PROTOCOL.md`` §4 (the table in force since 2025-07-31; Upbit rejects an off-grid
price with ``invalid_price_bid`` / ``invalid_price_ask``). Buy prices round down, sell prices up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: (lower bound KRW, tick KRW), highest first: Upbit KRW market since 2025-07-31 (PROTOCOL.md §4.1);
#: below 100 KRW the previous table's decimal ticks.
TICKS: tuple[tuple[float, float], ...] = (
    (1_000_000, 1000.0), (500_000, 500.0), (100_000, 100.0), (50_000, 50.0), (10_000, 10.0), (5_000, 5.0),
    (100, 1.0), (10, 0.01), (1, 0.001), (0.1, 0.0001), (0.01, 0.00001), (0.001, 1e-6), (0.0001, 1e-7), (0.0, 1e-8),
)
KST = timedelta(hours=9)
KST_MS = 9 * 3_600_000


def tick_size(price: float) -> float:
    """The KRW tick for a price (bucket bounds are ">= lower"). Raises ValueError for price <= 0."""
    if not price > 0 or not math.isfinite(price):
        raise ValueError(f"price {price!r} must be a positive finite KRW amount")
    for lower, tick in TICKS:
        if price >= lower:
            return tick
    return TICKS[-1][1]


def round_to_tick(price: float, side: str) -> float:
    """``price`` on the tick grid: a buy (``"bid"``) rounds down, a sell (``"ask"``) up, so the
    rounded limit is never worse for us than asked. Exact on the grid (no float dust)."""
    tick = tick_size(price)
    steps = price / tick
    n = math.floor(steps + 1e-9) if side == "bid" else math.ceil(steps - 1e-9)
    out = round(n * tick, 8)
    if out <= 0:  # rounded down to nothing: the lowest grid price of this bucket
        out = tick
    return out


def on_tick(price: float) -> bool:
    """True if ``price`` is on Upbit's grid."""
    return abs(round_to_tick(price, "bid") - price) <= 1e-9 * max(price, 1.0)


def kst_day_end_ms(market_ms: int) -> int:
    """Market ms (Unix ms UTC) of the next 00:00 KST after ``market_ms``."""
    k = KST_MS
    return (market_ms + k) // 86_400_000 * 86_400_000 + 86_400_000 - k


def kst_day(market_ms: int) -> str:
    """The KST calendar day (``YYYY-MM-DD``) of a market time (Unix ms UTC): daily limits reset at 00:00 KST."""
    return (datetime.fromtimestamp(market_ms / 1000, UTC) + KST).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Limits:
    """The account's hard limits (KRW; fractions/percent as named)."""
    min_order_krw: float
    max_order_krw: float
    max_market_krw: float
    fee_rate: float
    max_positions: int
    daily_loss_pct: float
    max_drawdown_pct: float


def entry_size(equity: float, cash: float, share: float, lim: Limits) -> float:
    """KRW to spend on an entry: ``share`` of equity, capped by the per-order and per-market limits and
    by the cash that also pays the fee. May be below the minimum (then :func:`check_entry` denies)."""
    return max(0.0, min(equity * share, lim.max_order_krw, lim.max_market_krw, cash / (1 + lim.fee_rate)))


def check_entry(*, market: str, krw: float, cash: float, open_positions: int, pending_entries: int,
                has_position: bool, has_open_order: bool, held_krw: float, lim: Limits,
                blocked: str = "", stop_loss_pct: float = 0.0) -> str:
    """Why a market buy of ``krw`` in ``market`` must not be sent, or ``""`` if it may.

    ``blocked`` is a risk block already in force (daily loss, drawdown); ``stop_loss_pct`` makes an entry
    that would be worth less than the minimum at its stop-loss a denial (it could not be sold). Each
    reason is a short
    machine-readable word followed by the figures, e.g. ``"max_positions 5/5"``."""
    if blocked:
        return blocked
    if has_position or has_open_order:
        return "one_entry_per_market: a position or an open order exists"
    if open_positions + pending_entries >= lim.max_positions:
        return f"max_positions {open_positions + pending_entries}/{lim.max_positions}"
    if not math.isfinite(krw) or krw < lim.min_order_krw:
        return f"under_min_total {krw:,.0f} < {lim.min_order_krw:,.0f} KRW"
    if krw * (1 - stop_loss_pct / 100) < lim.min_order_krw:
        return (f"exit_would_be_dust: {krw:,.0f} KRW at the stop-loss is worth {krw * (1 - stop_loss_pct / 100):,.0f} "
                f"< {lim.min_order_krw:,.0f} KRW, which could not be sold")
    if krw > lim.max_order_krw * (1 + 1e-9):
        return f"max_order_krw {krw:,.0f} > {lim.max_order_krw:,.0f}"
    if held_krw + krw > lim.max_market_krw * (1 + 1e-9):
        return f"max_market_krw {held_krw + krw:,.0f} > {lim.max_market_krw:,.0f}"
    if krw * (1 + lim.fee_rate) > cash * (1 + 1e-9):
        return f"insufficient_funds {krw * (1 + lim.fee_rate):,.0f} > cash {cash:,.0f}"
    return ""


def check_exit(*, volume: float, price: float, has_open_exit: bool, lim: Limits) -> str:
    """Why a market sell of ``volume`` at about ``price`` must not be sent, or ``""``."""
    if has_open_exit:
        return "exit_pending: an exit order is already open"
    if not volume > 0:
        return "no_position"
    if volume * price < lim.min_order_krw:
        return f"under_min_total {volume * price:,.0f} < {lim.min_order_krw:,.0f} KRW (dust)"
    return ""


def daily_loss_tripped(daily_pnl: float, day_start_equity: float, lim: Limits) -> bool:
    """The day's P&L (equity now minus at 00:00 KST) is at or below ``-daily_loss_pct`` of the start."""
    return day_start_equity > 0 and daily_pnl <= -lim.daily_loss_pct / 100 * day_start_equity


def drawdown_pct(equity: float, hwm: float) -> float:
    """Percent below the high-water mark (0 at or above it)."""
    return max(0.0, (hwm - equity) / hwm * 100) if hwm > 0 else 0.0
