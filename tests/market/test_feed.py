"""The candle feed: DEFAULT and SIMPLE trades (parsed by the venue adapter) build candles;
anything malformed is counted and dropped, never written to a ring."""
import json

import pytest

from procs.market.feed import CandleFeed
from procs.runtime.config import load_config
from procs.upbit.parsing import parse_frame
from shm.tables import CLOSED, GAP


class Feed(CandleFeed):
    """The feed fed frames the way ingest feeds it."""

    def on_message(self, frame):
        return self.apply(parse_frame(frame))

    @property
    def dropped(self):
        return sum(self.drops.values())


def make_feed(instance, tmp_path, monkeypatch, text="", **kw):
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    (tmp_path / "o.toml").write_text("[markets]\ncodes = ['KRW-BTC', 'KRW-ETH']\n[shm]\ncapacity = 64\n" + text)
    cfg = load_config("replay", overlay=tmp_path / "o.toml")
    return Feed(cfg.base, cfg.ingest, **kw)


@pytest.fixture
def ingest(instance, tmp_path, monkeypatch):
    return make_feed(instance, tmp_path, monkeypatch)


def trade(ts_ms, price, vol, code="KRW-BTC", simple=False, sid=None):
    sid = ts_ms * 10 if sid is None else sid
    d = {"type": "trade", "code": code, "trade_price": price, "trade_volume": vol, "trade_timestamp": ts_ms,
         "timestamp": ts_ms, "sequential_id": sid, "stream_type": "REALTIME"}
    if simple:
        m = {"type": "ty", "code": "cd", "trade_price": "tp", "trade_volume": "tv", "trade_timestamp": "ttms",
             "timestamp": "tms", "sequential_id": "sid", "stream_type": "st"}
        d = {m[k]: v for k, v in d.items()}
    return json.dumps(d).encode()


T0 = 1_729_670_400_000  # 2024-10-23T08:00:00Z


def test_trades_build_candles_in_every_timeframe(ingest):
    ingest.on_message(trade(T0 + 1_000, 100.0, 1.0))
    ingest.on_message(trade(T0 + 60_000, 120.0, 0.5, simple=True))
    ingest.on_message(trade(T0 + 120_000, 90.0, 2.0))
    ingest.on_message(trade(T0 + 1_800_000 + 5, 95.0, 1.0))        # next 30 m candle
    ingest.on_message(trade(T0 + 4 * 3_600_000 + 5, 97.0, 1.0))    # skips 30 m intervals
    r30 = ingest.rings["30m"]
    row = r30.row_of("KRW-BTC")
    recs, cnt = r30.read_last(row, 10)
    assert cnt == 3
    first = recs[0]
    assert (first["t"], first["o"], first["h"], first["l"], first["c"]) == (T0 // 1000, 100.0, 120.0, 90.0, 90.0)
    assert first["v"] == 3.5 and first["value"] == 100.0 + 60.0 + 180.0 and first["n"] == 3
    assert recs["flags"][0] & CLOSED and recs["flags"][1] & CLOSED and not recs["flags"][2] & CLOSED
    assert recs["flags"][2] & GAP
    r4h, _ = ingest.rings["4h"].read_last(row, 10)
    assert list(r4h["t"]) == [T0 // 1000 // 14400 * 14400, (T0 // 1000 + 4 * 3600) // 14400 * 14400]
    assert r4h[0]["v"] == 4.5 and r4h[0]["c"] == 95.0
    d1, _ = ingest.rings["1d"].read_last(row, 10)
    assert len(d1) == 1 and d1[0]["t"] == T0 // 1000 // 86400 * 86400 and d1[0]["n"] == 5


@pytest.mark.parametrize("frame, why", [
    (b"not json{", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"42", "not_object"),
    (trade(T0, float("nan"), 1.0).replace(b"NaN", b"NaN"), "bad_trade"),
    (trade(T0, -5.0, 1.0), "bad_trade"),
    (trade(T0, 100.0, 0.0), "bad_trade"),
    (json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": "100", "trade_volume": 1,
                 "trade_timestamp": T0}).encode(), "bad_trade"),
    (json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": 100.0, "trade_volume": 1}).encode(), "bad_trade"),
    (trade(T0, 100.0, 1.0, code="KRW-NOPE"), "unknown_market"),
    (json.dumps({"type": "orderbook", "code": "KRW-BTC"}).encode(), "type:orderbook"),
])
def test_malformed_messages_are_counted_and_dropped(ingest, frame, why):
    gseq = ingest.rings["30m"].global_seq
    ingest.on_message(frame)
    assert ingest.drops[why] == 1 and ingest.dropped == 1
    assert ingest.rings["30m"].global_seq == gseq
    assert int(ingest.rings["30m"].counts().sum()) == 0


def test_late_trade_is_dropped_and_closed_candle_unchanged(ingest):
    ingest.on_message(trade(T0 + 10, 100.0, 1.0))
    ingest.on_message(trade(T0 + 1_800_000 + 10, 101.0, 1.0))
    before = {tf: r.read_last(0, 5)[0].copy() for tf, r in ingest.rings.items()}
    ingest.on_message(trade(T0 + 20, 500.0, 1.0))  # belongs to the closed 30 m candle
    for tf, r in ingest.rings.items():  # dropped whole: the 4 h and 1 d candles do not get it either
        assert r.read_last(0, 5)[0].tobytes() == before[tf].tobytes(), tf
    assert ingest.drops["late_trade"] == 1


def test_duplicates_count_once_and_reordered_trades_keep_open_and_close(ingest):
    ingest.on_message(trade(T0 + 5_000, 100.0, 1.0))
    ingest.on_message(trade(T0 + 5_000, 100.0, 1.0))   # same sequential_id: a duplicate
    ingest.on_message(trade(T0 + 9_000, 130.0, 1.0))
    ingest.on_message(trade(T0 + 1_000, 90.0, 1.0))    # arrives late but inside the open candle
    rec = ingest.rings["30m"].read_last(0, 1)[0][0]
    assert (rec["o"], rec["h"], rec["l"], rec["c"], rec["v"], rec["n"]) == (90.0, 130.0, 90.0, 130.0, 3.0, 3)
    assert ingest.duplicates == 1 and ingest.drops["duplicate"] == 1


def test_keepalive_and_error_messages(ingest):
    ingest.on_message(b'{"status":"UP"}')
    ingest.on_message(b'{"error":{"name":"WRONG_FORMAT","message":"x"}}')
    assert ingest.dropped == 0 and ingest.errors == 1
