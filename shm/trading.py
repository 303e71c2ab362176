"""The trader's tables: ``trader``, ``positions``, ``orders`` (snapshot tables) and the record of
``timeline.trader`` and ``trades`` rings (DESIGN §3). The trader writes the first four; ingest writes
``trades``. Everyone else attaches read-only.

``trader`` — one row (:data:`TRADER_DTYPE`):
    ``mode`` int32 (:data:`DISARMED` / :data:`ARMED` / :data:`KILLED`); ``broker`` S8 (``paper`` /
    ``upbit``); ``preset`` S16; ``config_version`` int64 (moves on every CONFIG.APPLY); ``cash``,
    ``equity`` float64 KRW (equity = cash + positions at the last trade price); ``realized``,
    ``unrealized``, ``daily_pnl`` float64 KRW (daily: realized + unrealized change since the KST day
    began); ``fees`` float64 KRW paid; ``hwm`` float64 KRW equity high-water mark; ``drawdown_pct``
    float64 percent below it; ``open_positions``, ``open_orders`` int32; ``risk_flags`` int32 bit set
    of :data:`RISK_DAILY_LOSS`, :data:`RISK_DRAWDOWN`, :data:`RISK_MAX_POSITIONS`; ``reason`` S96 the
    last mode change or risk trip, UTF-8; ``market_ms`` int64 market time of the last trade seen (Unix
    ms UTC); ``updated_ns`` int64 CLOCK_MONOTONIC ns of the write; ``decisions`` uint64 strategy
    evaluations; ``trades_seen`` uint64.

``positions`` — one row per open position (:data:`POSITION_DTYPE`), unused rows have an empty code:
    ``code`` S16; ``qty`` float64 base units; ``avg_price`` float64 KRW (fees excluded); ``cost`` float64
    KRW paid including the buy fee; ``tp``, ``sl`` float64 KRW take-profit / stop-loss prices;
    ``last_price`` float64 KRW; ``unrealized`` float64 KRW after the sell fee it would pay;
    ``entry_tag`` S24 (the rule that opened it); ``opened_ms`` int64 market time; ``exiting`` int32 (1
    while an exit order is open).

``orders`` — the open orders and the most recent closed ones, newest first (:data:`ORDER_DTYPE`):
    ``identifier`` S48 the client order identifier; ``code`` S16; ``side`` S4 ``bid`` / ``ask``;
    ``ord_type`` S8 ``price`` (market buy by KRW) / ``market`` (market sell) / ``limit``; ``price``
    float64 KRW (limit price, or the KRW total of a market buy); ``volume`` float64 base units
    (requested; 0 for a market buy); ``filled`` float64 base units; ``avg_fill`` float64 KRW;
    ``fee`` float64 KRW; ``state`` S16 (:class:`procs.trading.orders.OrderState` value); ``reason``
    S48; ``created_ms``, ``updated_ms`` int64 market time.

``timeline.trader`` ring (:data:`TIMELINE_DTYPE`, one row named ``trader``): ``wall_ns`` int64 Unix ns
    UTC; ``market_ms`` int64 market time; ``severity`` int32 (:data:`INFO`, :data:`WARN`,
    :data:`ALERT`); ``kind`` S16 (e.g. ``order``, ``fill``, ``deny``, ``mode``, ``buy_eval``); ``market``
    S16; ``text`` S112 UTF-8, the "why".

``trades`` ring (:data:`TRADE_DTYPE`, one row per market, the same row as ``candles.<tf>``):
    ``t_ms`` int64 trade time Unix ms UTC; ``price`` float64 KRW; ``volume`` float64 base units;
    ``sequential_id`` int64; ``recv_ns`` int64 CLOCK_MONOTONIC ns when ingest received the frame
    (for latency measurement); ``side`` int8 1 = taker bought (BID), 0 = sold (ASK), -1 unknown.
"""
from __future__ import annotations

import numpy as np

from .snapshot import SnapshotTable

#: ``orders.state`` values of an order still working (``procs.trading.orders.OrderState``)
OPEN_STATES = frozenset({"new", "submitted", "accepted", "partially_filled", "unknown"})

DISARMED, ARMED, KILLED = 0, 1, 2
MODE_NAMES = {DISARMED: "DISARMED", ARMED: "ARMED", KILLED: "KILLED"}

RISK_DAILY_LOSS = 1     #: the daily loss limit tripped (the engine disarmed)
RISK_DRAWDOWN = 2       #: the drawdown limit tripped (the engine disarmed)
RISK_MAX_POSITIONS = 4  #: every position slot is taken (entries are denied)
RISK_FLAG_NAMES = {RISK_DAILY_LOSS: "daily_loss", RISK_DRAWDOWN: "drawdown", RISK_MAX_POSITIONS: "max_positions"}

INFO, WARN, ALERT = 0, 1, 2
SEVERITY_NAMES = {INFO: "info", WARN: "warn", ALERT: "alert"}

TRADE_DTYPE = np.dtype([("t_ms", "<i8"), ("price", "<f8"), ("volume", "<f8"), ("sequential_id", "<i8"),
                        ("recv_ns", "<i8"), ("side", "i1"), ("_pad", "V7")])

TRADER_DTYPE = np.dtype([
    ("mode", "<i4"), ("open_positions", "<i4"), ("open_orders", "<i4"), ("risk_flags", "<i4"),
    ("broker", "S8"), ("preset", "S16"), ("config_version", "<i8"),
    ("cash", "<f8"), ("equity", "<f8"), ("realized", "<f8"), ("unrealized", "<f8"), ("daily_pnl", "<f8"),
    ("fees", "<f8"), ("hwm", "<f8"), ("drawdown_pct", "<f8"),
    ("market_ms", "<i8"), ("updated_ns", "<i8"), ("decisions", "<u8"), ("trades_seen", "<u8"),
    ("reason", "S96"),
])

POSITION_DTYPE = np.dtype([
    ("code", "S16"), ("qty", "<f8"), ("avg_price", "<f8"), ("cost", "<f8"), ("tp", "<f8"), ("sl", "<f8"),
    ("last_price", "<f8"), ("unrealized", "<f8"), ("entry_tag", "S24"), ("opened_ms", "<i8"), ("exiting", "<i4"),
    ("_pad", "V4"),
])

ORDER_DTYPE = np.dtype([
    ("identifier", "S48"), ("code", "S16"), ("side", "S4"), ("ord_type", "S8"), ("price", "<f8"), ("volume", "<f8"),
    ("filled", "<f8"), ("avg_fill", "<f8"), ("fee", "<f8"), ("state", "S16"), ("reason", "S48"),
    ("created_ms", "<i8"), ("updated_ms", "<i8"),
])

TIMELINE_DTYPE = np.dtype([("wall_ns", "<i8"), ("market_ms", "<i8"), ("severity", "<i4"), ("_pad", "V4"),
                           ("kind", "S16"), ("market", "S16"), ("text", "S112")])


def text(raw: bytes) -> str:
    """A fixed-width UTF-8 field as str (a multi-byte character cut at the end is dropped)."""
    return bytes(raw).rstrip(b"\0").decode("utf-8", "ignore")


def record_dict(rec: np.void) -> dict:
    """One record of these tables as a dict of Python values: byte fields as text (:func:`text`), numbers as
    int / float, padding (fields named ``_…``) left out."""
    out = {}
    for name, value in zip(rec.dtype.names, rec.tolist(), strict=True):
        if name.startswith("_"):
            continue
        out[name] = text(value) if isinstance(value, bytes) else value
    return out


def fit(s: str, n: int) -> bytes:
    """``s`` as UTF-8 cut to at most ``n`` bytes at a character boundary."""
    raw = s.encode("utf-8")
    return raw if len(raw) <= n else raw[:n].decode("utf-8", "ignore").encode("utf-8")


class TraderTable(SnapshotTable):
    """The engine's state in one row: ``writer(instance, 1)`` / ``open(instance, 1)``."""
    KIND = "trader"
    TABLE = "trader"
    DTYPE = TRADER_DTYPE

    def state(self, max_spins: int = 10_000) -> np.void:
        """Consistent copy of the row."""
        rows, _ = self.read_all(max_spins)
        return rows[0]


class PositionsTable(SnapshotTable):
    """Open positions, one per row (rows = ``shm.rows``)."""
    KIND = "positions"
    TABLE = "positions"
    DTYPE = POSITION_DTYPE

    def open_positions(self, max_spins: int = 10_000) -> np.ndarray:
        return self.used("code", max_spins)[0]


class OrdersTable(SnapshotTable):
    """Open and recent orders, newest first (rows = ``shm.orders_rows``)."""
    KIND = "orders"
    TABLE = "orders"
    DTYPE = ORDER_DTYPE

    def recent(self, max_spins: int = 10_000) -> np.ndarray:
        return self.used("identifier", max_spins)[0]
