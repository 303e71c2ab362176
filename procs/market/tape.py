"""Recorded real Upbit candles, and the trades synthesized from them (the tape): what the replay exchange
serves and what a backtest runs on — one module, so a backtest and a full replay see the same trades. (It
reads the bundled data files; no network.)

Source: raw ``GET /v1/candles/minutes/30`` rows (CSV, Upbit field names, newest first) in
``data/upbit/minute30/`` (see ``data/upbit/PROVENANCE.md``).

Trade synthesis (deterministic, no randomness): each source candle becomes ``k`` trades
inside its period, walking ``open → low → high → close`` for a rising candle and
``open → high → low → close`` for a falling one (extra trades repeat the two extremes).
Volumes are split so that:

* the candle rebuilt from the trades has exactly the source ``o h l c``;
* its volume, summed trade by trade in float64 in arrival order, equals the source
  ``candle_acc_trade_volume`` **bit for bit**: every trade volume but the last is a
  multiple of ``ulp(V)``, so every partial sum is exactly representable and the last
  trade takes the exact remainder;
* its value (sum of price × volume) equals the source ``candle_acc_trade_price`` to
  float rounding: the weights are solved so that the volume-weighted price is the
  source VWAP. (Bit-exactness is impossible here: each product is rounded, and the
  source value is a decimal sum printed to 4–5 decimals.)

Trade timestamps are spread evenly inside the candle and never reach its end (the
source ``timestamp`` may overshoot the end by up to 67 ms; a trade there would
belong to the next candle).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .candles import group_ohlcv

SOURCE_UNIT_S = 1800  # the bundled data is 30-minute candles
CACHE_VERSION = 1     #: of the parsed-candle cache's entries (bumped when the parsing or SOURCE_DTYPE changes)

#: Columns of a source candle array (all float64 except t / ts_last which are int64).
SOURCE_DTYPE = np.dtype([("t", "<i8"), ("o", "<f8"), ("h", "<f8"), ("l", "<f8"), ("c", "<f8"),
                         ("v", "<f8"), ("value", "<f8"), ("ts_last", "<i8")])

#: One synthesized trade. ``ts`` int64 ms UTC (trade_timestamp); ``price`` float64 KRW;
#: ``volume`` float64 base units; ``bid`` 1 when the taker bought (ask_bid "BID");
#: ``seq_id`` int64 sequential_id (unique per market); ``market`` index into the market list.
TRADE_DTYPE = np.dtype([("ts", "<i8"), ("price", "<f8"), ("volume", "<f8"), ("bid", "i1"),
                        ("seq_id", "<i8"), ("market", "<i2")])


def parse_utc(s: str) -> int:
    """``'2024-10-23T08:30:00'`` (naive = UTC, as Upbit writes it) → Unix seconds."""
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()) if "+" not in s[10:] \
        else int(datetime.fromisoformat(s).timestamp())


def load_source_candles(path: Path, cache_dir: Path | None = None) -> tuple[str, np.ndarray]:
    """Read one raw Upbit minute-candle CSV(.gz). Returns ``(market, candles)`` oldest first.

    ``cache_dir``: keep the parsed candles there (``.npz``, named after the file, its directory, its size and
    modification time and :data:`CACHE_VERSION`, so an edited file is parsed again) and read them from there
    next time — 40 markets' CSVs take 0.4 s to parse, their cache 15 ms. A damaged entry is parsed again.
    Raises ValueError for a file with more than one market or a row failing OHLC order.
    """
    path = Path(path)
    if cache_dir is None:
        return _parse_source_candles(path)
    st = path.stat()
    where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    cached = Path(cache_dir) / f"{path.name}.{where}.{st.st_size}.{st.st_mtime_ns}.v{CACHE_VERSION}.npz"
    try:
        with np.load(cached) as z:
            market, out = str(z["market"]), z["candles"]
        if out.dtype == SOURCE_DTYPE:
            return market, out
    except FileNotFoundError:
        pass
    except Exception:       # a damaged entry (a crash while writing it): parsed again, replaced
        with contextlib.suppress(OSError):
            cached.unlink()
    market, out = _parse_source_candles(path)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    try:                    # a cache that cannot be written is only slower
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, market=np.array(market), candles=out)
        os.replace(tmp, cached)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return market, out


def _parse_source_candles(path: Path) -> tuple[str, np.ndarray]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if not rows or header is None:
        raise ValueError(f"{path}: no candles")
    col = {name: i for i, name in enumerate(header)}
    try:
        cols = list(zip(*rows, strict=True))
        markets = set(cols[col["market"]])
        if len(markets) != 1:
            raise ValueError(f"{path}: expected one market, found {sorted(markets)}")
        out = np.empty(len(rows), dtype=SOURCE_DTYPE)
        times = cols[col["candle_date_time_utc"]][::-1]
        if any("+" in t[10:] or t.endswith("Z") for t in times):
            out["t"] = [parse_utc(t) for t in times]
        else:   # naive ISO-8601 = UTC, parsed by numpy at once
            out["t"] = np.array(times, dtype="datetime64[s]").astype(np.int64)
        for field, name in (("o", "opening_price"), ("h", "high_price"), ("l", "low_price"), ("c", "trade_price"),
                            ("v", "candle_acc_trade_volume"), ("value", "candle_acc_trade_price")):
            out[field] = np.array(cols[col[name]][::-1], dtype=np.float64)
        out["ts_last"] = np.array(cols[col["timestamp"]][::-1], dtype=np.int64)
    except (KeyError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not Upbit minute candles ({type(e).__name__}: {e})") from None
    bad = (out["l"] > np.minimum(out["o"], out["c"])) | (out["h"] < np.maximum(out["o"], out["c"])) | (out["v"] <= 0)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} rows fail OHLC order or have no volume")
    if np.any(np.diff(out["t"]) <= 0):
        raise ValueError(f"{path}: candle times are not strictly increasing")
    return markets.pop(), out


def load_dataset(data_dir: Path, markets: list[str] | tuple[str, ...] | None = None,
                 cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """All ``minute30/*.csv.gz`` of ``data_dir`` as {market: candles}, optionally only ``markets``
    (``cache_dir``: see :func:`load_source_candles`).

    Raises FileNotFoundError naming a requested market without a file.
    """
    files = sorted((Path(data_dir) / "minute30").glob("*.csv*"))
    by_market = {}
    for f in files:
        m = f.name.split("_")[0]
        if markets is None or m in markets:
            if m in by_market:
                continue  # first (shortest-named) file of a market wins
            by_market[m] = load_source_candles(f, cache_dir)[1]
    if markets is not None:
        missing = [m for m in markets if m not in by_market]
        if missing:
            raise FileNotFoundError(f"no replay data for {', '.join(missing)} in {Path(data_dir) / 'minute30'}")
        return {m: by_market[m] for m in markets}
    return by_market


def markets_in(data_dir: Path) -> tuple[str, ...]:
    """The markets with a ``minute30/KRW-*.csv(.gz)`` in ``data_dir``, sorted."""
    return tuple(sorted({f.name.split("_")[0] for f in (Path(data_dir) / "minute30").glob("KRW-*.csv*")}))


def load_market_all(data_dir: Path) -> list[dict]:
    """The recorded ``GET /v1/market/all?is_details=true`` response."""
    with gzip.open(Path(data_dir) / "rest" / "market_all_is_details_2025-01-25.json.gz", "rt") as f:
        return json.load(f)


def synthesize_trades(candles: np.ndarray, k: int = 6, unit_s: int = SOURCE_UNIT_S, market: int = 0) -> np.ndarray:
    """Trades (``TRADE_DTYPE``, shape ``(len(candles) * k,)``, time order) whose candles equal ``candles``.

    See the module docstring for the guarantees. ``k >= 4``.
    """
    if k < 4:
        raise ValueError("k must be >= 4 (open, two extremes, close)")
    n = len(candles)
    o, h, l, c = candles["o"], candles["h"], candles["l"], candles["c"]
    rising = c >= o
    e1 = np.where(rising, l, h)
    e2 = np.where(rising, h, l)
    # price path: o, e1 x a, e2 x b, c  with a + b = k - 2
    a = (k - 2 + 1) // 2
    prices = np.empty((n, k))
    prices[:, 0] = o
    prices[:, 1:1 + a] = e1[:, None]
    prices[:, 1 + a:k - 1] = e2[:, None]
    prices[:, k - 1] = c

    # weights: uniform, then shifted toward the extreme on the side of the source VWAP
    V, W = candles["v"], candles["value"]
    vwap = W / V
    w0 = np.full((n, k), 1.0 / k)
    m0 = prices.mean(axis=1)
    up = vwap > m0
    target_col = np.where(up, np.where(rising, 1 + a, 1), np.where(rising, 1, 1 + a))  # first h / l column
    p_target = prices[np.arange(n), target_col]
    denom = p_target - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(denom != 0, (vwap - m0) / denom, 0.0)
    t = np.clip(t, 0.0, 1.0 - 1e-9)
    w = w0 * (1.0 - t)[:, None]
    w[np.arange(n), target_col] += t

    # volumes: multiples of ulp(V) for all but the last trade, the last takes the exact rest
    u = np.spacing(V)
    vol = np.maximum(np.round(V[:, None] * w[:, :k - 1] / u[:, None]), 1.0) * u[:, None]
    partial = np.cumsum(vol, axis=1)
    over = partial[:, -1] >= V
    if over.any():  # cannot happen for k <= 64 and V >> ulp; keep the invariant explicit
        raise ValueError(f"{int(over.sum())} candles could not be split exactly")
    last = V - partial[:, -1]
    volumes = np.concatenate([vol, last[:, None]], axis=1)

    # timestamps: evenly inside the period, the last one at the source's last-tick time if it is inside
    start_ms = candles["t"] * 1000
    span = unit_s * 1000
    offs = (np.arange(1, k + 1) * span) // (k + 1)
    ts = start_ms[:, None] + offs[None, :]
    last_ts = np.clip(candles["ts_last"], ts[:, k - 2] + 1, start_ms + span - 1)
    ts[:, k - 1] = np.maximum(last_ts, ts[:, k - 2] + 1)

    bid = np.empty((n, k), dtype=np.int8)
    bid[:, 0] = 1
    bid[:, 1:] = prices[:, 1:] >= prices[:, :-1]

    out = np.empty(n * k, dtype=TRADE_DTYPE)
    out["ts"] = ts.ravel()
    out["price"] = prices.ravel()
    out["volume"] = volumes.ravel()
    out["bid"] = bid.ravel()
    out["seq_id"] = out["ts"] * 10000 + np.tile(np.arange(k), n)
    out["market"] = market
    return out


@dataclass
class ReplayTape:
    """What the exchange replays: events in replay-clock order.

    ``trades`` (TRADE_DTYPE) carry market time in ``ts``. ``clock_ms`` is the replay clock of
    each event (int64 ms; for a tape built from candles it is the trade time, for a recording
    the receive time), ``kinds`` 0 = trade / 1 = ticker, ``index`` the trade row or the
    ``tickers`` entry (``(market index, DEFAULT message)``). ``candles`` per market back the
    REST candle endpoint.
    """
    markets: list[str]
    candles: dict[str, np.ndarray]
    trades: np.ndarray
    clock_ms: np.ndarray | None = None
    kinds: np.ndarray | None = None
    index: np.ndarray | None = None
    tickers: list = field(default_factory=list)

    def __post_init__(self):
        if self.clock_ms is None:
            self.clock_ms = self.trades["ts"].astype(np.int64)
            self.kinds = np.zeros(len(self.trades), np.int8)
            self.index = np.arange(len(self.trades))

    @classmethod
    def build(cls, data_dir: Path, markets: list[str] | tuple[str, ...], k: int = 6,
              start_s: int | None = None, end_s: int | None = None, cache_dir: Path | None = None) -> ReplayTape:
        """Trades synthesized from the bundled candles, all markets merged in time order
        (ties: market order), optionally only candles starting in ``[start_s, end_s)``
        (``cache_dir``: see :func:`load_source_candles`)."""
        candles = load_dataset(data_dir, markets, cache_dir)
        if start_s is not None or end_s is not None:
            lo, hi = start_s or 0, end_s or 2**62
            candles = {m: c[(c["t"] >= lo) & (c["t"] < hi)] for m, c in candles.items()}
        parts = [synthesize_trades(candles[m], k, market=i) for i, m in enumerate(markets)]
        trades = np.concatenate(parts)
        order = np.lexsort((trades["market"], trades["ts"]))
        return cls(list(markets), candles, trades[order])

    def window(self, start_s: int | None, end_s: int | None) -> ReplayTape:
        """The part of a tape built from candles whose candles start in ``[start_s, end_s)`` (None: open) —
        the tape :meth:`build` makes for that window, without reading the data again."""
        lo, hi = start_s or 0, end_s or 2**52
        unit_ms = SOURCE_UNIT_S * 1000
        start = self.trades["ts"] // unit_ms * unit_ms      # each trade's candle
        return ReplayTape(self.markets, {m: c[(c["t"] >= lo) & (c["t"] < hi)] for m, c in self.candles.items()},
                          self.trades[(start >= lo * 1000) & (start < hi * 1000)])

    def span_s(self) -> tuple[int, int]:
        """(first candle's start, one unit past the last candle's start), Unix s."""
        starts = [c["t"] for c in self.candles.values() if len(c)]
        return int(min(t[0] for t in starts)), int(max(t[-1] for t in starts)) + SOURCE_UNIT_S

    @property
    def start_ms(self) -> int:
        return int(self.trades["ts"].min()) if len(self.trades) else 0


def rollup(candles: np.ndarray, unit_s: int) -> np.ndarray:
    """Aggregate source candles into ``unit_s`` buckets aligned in UTC (same dtype, oldest first).

    Used by the exchange's REST candles for units above the data's own.
    """
    if unit_s == SOURCE_UNIT_S or len(candles) == 0:
        return candles
    starts, ends, cols = group_ohlcv(candles["t"] // unit_s * unit_s, candles["o"], candles["h"], candles["l"],
                                     candles["c"], candles["v"], candles["value"])
    out = np.empty(len(starts), dtype=SOURCE_DTYPE)
    for k, col in cols.items():
        out[k] = col
    out["ts_last"] = candles["ts_last"][ends - 1]
    return out
