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

    def status_text(self, stats: FrameStatsLike) -> str:
        """The status line."""

    def report(self, stats: FrameStatsLike) -> None:
        """Heartbeat into the monitor's status row."""

    def select(self, market_step: int = 0, tf_step: int | None = 0, tf_index: int | None = None) -> None:
        """Keyboard navigation."""
