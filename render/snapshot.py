"""What the chart draws, by name: :class:`ChartSnapshot`, and what feeds it: :class:`ChartSource`.

No VisPy or Qt here, so the data side (``procs.views``) can build snapshots without importing
the renderer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class ChartSnapshot:
    """One market and timeframe, oldest candle first; every array aligned with ``candles``
    (float64, NaN where an indicator is still warming up or missing).

    ``candles``: structured array with ``t`` (int64 Unix s UTC, candle start), ``o h l c``
    (float64 KRW) and ``v``; ``ema_fast``/``ema_slow`` KRW; ``bb_upper``/``bb_mid``/``bb_lower``
    KRW (Bollinger Bands); ``rsi`` percent 0–100; ``macd``/``macd_signal``/``macd_hist`` KRW;
    ``marks`` int indices of candles where a buy rule fired.
    """
    candles: np.ndarray
    ema_fast: np.ndarray = field(default_factory=_empty)
    ema_slow: np.ndarray = field(default_factory=_empty)
    bb_upper: np.ndarray | None = None
    bb_mid: np.ndarray | None = None
    bb_lower: np.ndarray | None = None
    rsi: np.ndarray | None = None
    macd: np.ndarray | None = None
    macd_signal: np.ndarray | None = None
    macd_hist: np.ndarray | None = None
    marks: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    rsi_label: str = "RSI"
    macd_label: str = "MACD"

    @property
    def bands(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self.bb_upper is None:
            return None
        return self.bb_upper, self.bb_mid, self.bb_lower

    @property
    def macd_lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self.macd is None:
            return None
        return self.macd, self.macd_signal, self.macd_hist


@dataclass(frozen=True)
class PositionView:
    """The shown market's open position (KRW unless said): ``qty`` base units, ``avg_price``
    (fees excluded), ``cost`` paid with the buy fee, ``tp``/``sl`` take-profit / stop-loss prices
    (NaN or 0 = none), ``unrealized`` after the sell fee, ``exiting`` while an exit order is open."""
    qty: float
    avg_price: float
    cost: float
    tp: float
    sl: float
    last_price: float
    unrealized: float
    entry_tag: str = ""
    opened_ms: int = 0
    exiting: bool = False

    @property
    def pnl_pct(self) -> float:
        return self.unrealized / self.cost * 100 if self.cost else float("nan")


@dataclass(frozen=True)
class OrderView:
    """One row of the order and fill tape (market time in Unix ms UTC)."""
    updated_ms: int
    market: str
    side: str          # "bid" / "ask"
    ord_type: str      # "price" (market buy by KRW) / "market" / "limit"
    price: float       # limit price or the KRW total of a market buy
    volume: float
    filled: float
    avg_fill: float
    state: str
    reason: str = ""


@dataclass(frozen=True)
class TimelineView:
    """One timeline entry: ``severity`` ``info`` / ``warn`` / ``alert``."""
    market_ms: int
    severity: str
    kind: str
    market: str
    text: str


@dataclass(frozen=True)
class TradingView:
    """What the trading engine shows (plain values: no shm, no procs here).

    ``engine``: ``"not running"`` (its tables do not exist yet), ``"live"`` or ``"not responding"``
    (its last write is older than the staleness limit); ``age_s`` seconds since that write;
    ``lag_ms`` the engine's own lag (its status row), NaN when unknown. ``mode`` ``ARMED`` /
    ``DISARMED`` / ``KILLED``; ``risk_flags`` names of the risk limits in force; ``reason`` the last
    mode change or risk trip (while not running: why its tables cannot be read, if they exist). ``market`` is the
    shown market: ``last_price`` its last trade, ``position`` its open position (or None), and
    ``fill_ms``/``fill_price``/``fill_entry`` its filled orders (market time, average fill price,
    True for a buy = entry). ``orders``: the most recent orders, newest first; ``timeline``: the
    most recent entries, newest first."""
    engine: str = "not running"
    mode: str = ""
    broker: str = ""
    preset: str = ""
    config_version: int = 0
    age_s: float = float("nan")
    lag_ms: float = float("nan")
    reason: str = ""
    risk_flags: tuple[str, ...] = ()
    cash: float = float("nan")
    equity: float = float("nan")
    realized: float = float("nan")
    unrealized: float = float("nan")
    daily_pnl: float = float("nan")
    fees: float = float("nan")
    hwm: float = float("nan")
    drawdown_pct: float = float("nan")
    open_positions: int = 0
    open_orders: int = 0
    market_ms: int = 0
    market: str = ""
    last_price: float = float("nan")
    position: PositionView | None = None
    fill_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fill_price: np.ndarray = field(default_factory=_empty)
    fill_entry: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    orders: tuple[OrderView, ...] = ()
    timeline: tuple[TimelineView, ...] = ()

    @property
    def running(self) -> bool:
        return self.engine != "not running"

    def chart_key(self) -> tuple:
        """What the price chart draws from this view (fills and the position's levels): the chart
        redraws its overlay only when this changes."""
        p = self.position
        levels = (p.avg_price, p.tp, p.sl) if p is not None else None
        return (self.market, levels, self.fill_ms.tobytes(), self.fill_price.tobytes(), self.fill_entry.tobytes())


class FrameStatsLike(Protocol):
    loop_hz: float
    fps: float
    max_draw_ms: float
    ticks: int
    frames: int


class ChartSource(Protocol):
    """What the render loops (:mod:`render.app`) drive the chart from."""

    snapshot_path: Path

    def poll(self) -> bool:
        """Cheap: did anything shown change (global seq, selection)?"""

    def snapshot(self) -> ChartSnapshot:
        """Copies of the selected market and timeframe."""

    def poll_trading(self) -> bool:
        """Cheap: should the trading view be rebuilt (the engine's tables moved, or its
        connection age needs a refresh)?"""

    def trading_view(self) -> TradingView:
        """The engine's state for the shown market."""

    def status_text(self, stats: FrameStatsLike) -> str:
        """The status line."""

    def report(self, stats: FrameStatsLike) -> None:
        """Heartbeat into the monitor's status row."""

    def select(self, market_step: int = 0, tf_step: int | None = 0, tf_index: int | None = None) -> None:
        """Keyboard navigation."""
