"""Indicator values aligned with the candles a reader copied: one read for every view (the monitor's
chart, ``smtm tail``, the trader's SNAPSHOT.GET) — :func:`shm.tables.aligned_indicators`."""
from __future__ import annotations

from shm.tables import aligned_indicators

__all__ = ["aligned_indicators"]
