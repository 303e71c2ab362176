"""Reading recordings back as a replay tape.

A recording of ingest's frame recorder (:mod:`procs.upbit.recorder` documents the format) — or
a plain JSONL file of Upbit messages such as the real ticker recording in ``data/upbit/ws/``
(time axis: each message's ``timestamp``) — is turned into a :class:`~procs.market.tape.ReplayTape`
whose replay clock is the **receive time**: replayed at ``speed`` 10 it runs ten times faster than
it was recorded, in the original arrival order. Trades keep their own ``trade_timestamp``;
tickers are replayed as recorded.
"""
from __future__ import annotations

import base64
import glob
import gzip
import json
from pathlib import Path

import numpy as np

from ..market.candles import group_ohlcv
from ..market.tape import SOURCE_DTYPE, SOURCE_UNIT_S, TRADE_DTYPE, ReplayTape
from ..upbit.fields import to_default


def iter_recorded(paths: list[Path]):
    """``(clock_ms, message dict in DEFAULT names)`` of every data message in ``paths``, in file order.

    Accepts recorder files (``{"t", "f"|"b"}`` lines) and plain JSONL of Upbit messages
    (clock: the message's ``timestamp``). Frames that are not JSON objects of a known type
    (keep-alives, errors, malformed frames) are skipped."""
    for p in paths:
        opener = gzip.open if str(p).endswith(".gz") else open
        with opener(p, "rt") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "t" in rec and ("f" in rec or "b" in rec):
                    clock = int(rec["t"])
                    try:
                        payload = json.loads(rec["f"] if "f" in rec else base64.b64decode(rec["b"]))
                    except (ValueError, UnicodeDecodeError):
                        continue
                else:
                    payload, clock = rec, None
                for msg in payload if isinstance(payload, list) else (payload,):
                    if not isinstance(msg, dict):
                        continue
                    if "ty" in msg:
                        msg = to_default(msg)
                    if msg.get("type") not in ("trade", "ticker"):
                        continue
                    yield (clock if clock is not None else int(msg.get("timestamp") or 0)), msg


def expand(pattern: str | Path, root: Path) -> list[Path]:
    """Files matching ``pattern`` (a path or glob, relative to ``root`` unless absolute), sorted."""
    p = Path(pattern)
    pat = str(p if p.is_absolute() else root / p)
    files = sorted(Path(x) for x in glob.glob(pat))
    if not files:
        raise FileNotFoundError(f"no recording matches {pat}")
    return files


def tape_from_recording(paths: list[Path]) -> ReplayTape:
    """A replay tape of the recorded trades and tickers (see the module docstring)."""
    trades, tickers, markets = [], [], {}
    for clock, msg in iter_recorded(paths):
        code = msg.get("code")
        if not isinstance(code, str):
            continue
        mi = markets.setdefault(code, len(markets))
        if msg["type"] == "trade":
            try:
                trades.append((clock, int(msg["trade_timestamp"]), float(msg["trade_price"]),
                               float(msg["trade_volume"]), 1 if msg.get("ask_bid") == "BID" else 0,
                               int(msg.get("sequential_id") or 0), mi))
            except (KeyError, TypeError, ValueError):
                continue
        else:
            tickers.append((clock, mi, msg))
    names = list(markets)
    tr = np.zeros(len(trades), TRADE_DTYPE)
    clock_tr = np.zeros(len(trades), np.int64)
    for i, (clock, ts, p, v, bid, sid, mi) in enumerate(trades):
        clock_tr[i] = clock
        tr[i] = (ts, p, v, bid, sid, mi)
    # events in recorded order: trades (kind 0) and tickers (kind 1), stable by clock
    clocks = np.concatenate([clock_tr, np.array([t[0] for t in tickers], np.int64)])
    kinds = np.concatenate([np.zeros(len(trades), np.int8), np.ones(len(tickers), np.int8)])
    idx = np.concatenate([np.arange(len(trades)), np.arange(len(tickers))])
    order = np.argsort(clocks, kind="stable")
    candles = {m: _candles_of(tr[tr["market"] == i]) for i, m in enumerate(names)}
    tape = ReplayTape(names, candles, tr)
    tape.clock_ms = clocks[order]
    tape.kinds = kinds[order]
    tape.index = idx[order]
    tape.tickers = [(mi, msg) for _, mi, msg in tickers]
    return tape


def _candles_of(trades: np.ndarray) -> np.ndarray:
    """30-minute candles of one market's trades (for the exchange's REST), oldest first."""
    if len(trades) == 0:
        return np.zeros(0, SOURCE_DTYPE)
    tr = trades[np.argsort(trades["ts"], kind="stable")]
    starts, ends, cols = group_ohlcv(tr["ts"] // 1000 // SOURCE_UNIT_S * SOURCE_UNIT_S, tr["price"], tr["price"],
                                     tr["price"], tr["price"], tr["volume"], tr["price"] * tr["volume"])
    out = np.zeros(len(starts), SOURCE_DTYPE)
    for k, col in cols.items():
        out[k] = col
    out["ts_last"] = tr["ts"][ends - 1]
    return out
