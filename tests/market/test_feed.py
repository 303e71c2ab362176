"""The candle feed: DEFAULT and SIMPLE trades (parsed by the venue adapter) build candles;
anything malformed is counted and dropped, never written to a ring."""
import json
import threading
import time

import numpy as np
import pytest

from procs.market.feed import CandleFeed
from procs.market.types import FetchError
from procs.runtime.loader import load_config
from procs.upbit.parsing import parse_frame
from shm.tables import BACKFILLED, CANDLE_DTYPE, CLOSED, GAP
from tests.helpers import FakeClock


class Feed(CandleFeed):
    """The feed fed frames the way ingest feeds it."""

    def on_message(self, frame):
        return self.apply(parse_frame(frame))

    @property
    def dropped(self):
        return sum(self.drops.values())


def make_feed(instance, tmp_path, monkeypatch, text="", **kw):
    """A feed over two markets; ``text`` continues the overlay's [shm] section."""
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
    (trade(T0, float("nan"), 1.0), "not_json"),    # NaN is not JSON (RFC 8259): the parser rejects the frame
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


# -- hostile input: each of these reached the rings before (regressions) ------------------------------
def test_a_trade_time_that_overflows_is_bad_and_changes_nothing(ingest):
    ingest.on_message(trade(T0 + 1_000, 100.0, 1.0))
    before = ingest.rings["30m"].read_last(0, 5)[0].tobytes()
    ingest.on_message(trade(10**25, 100.0, 1.0))
    ingest.on_message(trade(T0 + 2_000, 101.0, 1.0))
    recs, cnt = ingest.rings["30m"].read_last(0, 5)
    assert ingest.drops["bad_trade"] == 1 and cnt == 1 and not recs[0]["flags"] & CLOSED
    assert recs[0]["n"] == 2 and before != recs.tobytes()


def test_a_trade_from_the_year_3000_is_dropped_and_the_market_keeps_trading(ingest):
    y3000 = 32_503_680_000_000
    ingest.on_message(trade(T0 + 1_000, 100.0, 1.0))
    ingest.on_message(trade(y3000, 100.0, 1.0))
    ingest.on_message(trade(T0 + 1_800_000 + 5, 102.0, 1.0))   # the next real candle still opens
    assert ingest.drops["future_trade"] == 1 and ingest.drops["late_trade"] == 0
    for ring in ingest.rings.values():
        recs, _ = ring.read_last(0, 10)
        assert recs["t"].max() < 2_000_000_000, "a candle from the future reached a ring"
    assert ingest.rings["30m"].count(0) == 2


def test_fat_finger_prices_are_held_and_absurd_volumes_dropped(instance, tmp_path, monkeypatch):
    fetched = []
    feed = make_feed(instance, tmp_path, monkeypatch,
                     fetch=lambda *a: fetched.append(a) or (np.zeros(0, CANDLE_DTYPE), 0))
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    feed.on_message(trade(T0 + 2_000, 100.0 * 10**6, 1.0))   # 10^6 x the last price
    feed.on_message(trade(T0 + 3_000, 100.0, 1e308))          # value = inf
    feed.on_message(trade(T0 + 4_000, 101.0, 1.0))
    assert feed.drops["price_band"] == 1 and feed.drops["bad_trade"] == 1
    for ring in feed.rings.values():
        rec = ring.read_last(0, 1)[0][0]
        assert rec["h"] == 101.0 and np.isfinite(rec["value"]) and rec["v"] == 2.0
    assert "KRW-BTC" in feed.repairs   # the held trade's candle is checked against REST
    feed.clock = FakeClock(monotonic=1e9)
    feed.run_repairs()
    # from the start of the coarsest (1d) candle holding it, so every coarse candle is rebuilt whole
    assert fetched and fetched[0][0] == "KRW-BTC" and fetched[0][2] == T0 // 1000 // 86400 * 86400


def test_a_real_jump_comes_back_from_rest_and_recentres_the_band(instance, tmp_path, monkeypatch):
    t = T0 // 1000

    def rest(code, unit, since, pages):   # REST knows the jump: the candle closed at 1,000
        rec = np.zeros(1, CANDLE_DTYPE)
        rec[0] = (t, 100.0, 1000.0, 100.0, 1000.0, 2.0, 1100.0, 0, BACKFILLED)
        return rec, T0 + 2_000
    feed = make_feed(instance, tmp_path, monkeypatch, fetch=rest)
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    feed.on_message(trade(T0 + 2_000, 1000.0, 1.0))            # 10x: held
    assert feed.drops["price_band"] == 1 and feed.rings["30m"].read_last(0, 1)[0][0]["h"] == 100.0
    feed.repairs["KRW-BTC"].due = 0.0
    assert feed.run_repairs() == 1
    feed.on_message(trade(T0 + 3_000, 990.0, 1.0))             # inside the band around 1,000 now
    rec = feed.rings["30m"].read_last(0, 1)[0][0]
    assert feed.drops["price_band"] == 1 and (rec["h"], rec["c"], rec["v"]) == (1000.0, 990.0, 3.0)


@pytest.mark.parametrize("sid", [1.5, "77", None, True])
def test_sequential_id_must_be_an_integer(ingest, sid):
    frame = json.dumps({"type": "trade", "code": "KRW-BTC", "trade_price": 100.0, "trade_volume": 1.0,
                        "trade_timestamp": T0 + 5, "sequential_id": sid}).encode()
    ingest.on_message(frame)
    ingest.on_message(frame)   # the same trade again: never applied twice
    assert ingest.drops["bad_trade"] == 2 and ingest.rings["30m"].count(0) == 0


def test_a_json_array_of_scalars_counts_once(ingest):
    ingest.on_message(b"[1, 2, 3, 4, 5]")
    ingest.on_message(json.dumps([json.loads(trade(T0 + 5, 100.0, 1.0)), 7]).encode())
    assert ingest.drops["not_object"] == 2 and ingest.dropped == 2
    assert ingest.rings["30m"].count(0) == 1   # the trade in the mixed array is applied


# -- rows: a long-running engine never runs out of them --------------------------------------------
def churn(feed, clock, codes):
    for i, code in enumerate(codes):
        feed.set_universe(["KRW-BTC", code])
        feed.on_message(trade(T0 + 60_000 * i, 100.0, 1.0, code=code, sid=i))
        clock.advance(10.0)


def test_rows_of_markets_gone_long_enough_are_reclaimed(instance, tmp_path, monkeypatch):
    clock = FakeClock()
    text = "rows = 4\n[ingest]\nreclaim_after_s = 5.0\n[symbols]\ntop_n = 2\n"
    feed = make_feed(instance, tmp_path, monkeypatch, text, clock=clock)
    codes = [f"KRW-C{i}" for i in range(12)]            # 12 markets through a 4-row table
    churn(feed, clock, codes)
    ring = feed.rings["30m"]
    assert not feed.table_full and feed.universe == ["KRW-BTC", codes[-1]]
    row = ring.row_of(codes[-1])
    assert ring.count(row) == 1 and ring.generations()[row] > 0
    assert ring.read_last_of(codes[-1], 5)[0]["c"][0] == 100.0
    assert ring.read_last_of(codes[0], 5) is None       # the old market's name is gone with its row
    assert feed.drops["unknown_market"] == 0


def test_a_full_table_is_loud_and_retried(instance, tmp_path, monkeypatch, caplog):
    clock = FakeClock()
    text = "rows = 2\n[ingest]\nreclaim_after_s = 60.0\n[symbols]\ntop_n = 2\n"
    feed = make_feed(instance, tmp_path, monkeypatch, text, clock=clock)
    assert feed.universe == ["KRW-BTC", "KRW-ETH"]      # both rows in use
    with caplog.at_level("ERROR"):
        feed.set_universe(["KRW-BTC", "KRW-C2"])      # KRW-ETH left just now: its row is not free yet
    assert feed.table_full == ["KRW-C2"] and feed.errors == 1 and "tables full" in caplog.text
    assert feed.universe == ["KRW-BTC"]               # the rest is applied
    assert not feed.retry_universe()
    clock.advance(61.0)
    assert feed.retry_universe() and feed.universe == ["KRW-BTC", "KRW-C2"] and not feed.table_full


# -- repairs: REST is fetched outside the write lock --------------------------------------------------
def test_live_trades_keep_flowing_while_a_repair_waits_on_rest(instance, tmp_path, monkeypatch):
    in_fetch, release = threading.Event(), threading.Event()

    def slow_rest(code, unit, since, pages):
        in_fetch.set()
        assert release.wait(10)
        return np.zeros(0, CANDLE_DTYPE), 0
    feed = make_feed(instance, tmp_path, monkeypatch, fetch=slow_rest)
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    feed.on_message(trade(T0 + 1_800_000 + 5, 101.0, 1.0))
    feed.on_message(trade(T0 + 2_000, 100.5, 1.0))        # late: its candle is repaired from REST
    feed.repairs["KRW-BTC"].due = 0.0
    repair = threading.Thread(target=feed.run_repairs)
    repair.start()
    assert in_fetch.wait(10)
    t0 = time.monotonic()
    for i in range(50):                                   # both markets, while REST hangs
        feed.on_message(trade(T0 + 1_800_000 + 10 + i, 101.0, 1.0, code=("KRW-ETH", "KRW-BTC")[i % 2], sid=9000 + i))
    assert time.monotonic() - t0 < 1.0 and feed.trades == 2 + 50
    release.set()
    repair.join(10)
    assert not repair.is_alive() and "KRW-BTC" not in feed.repairs


# -- the repair buffer: every trade counted exactly once ---------------------------------------------
def failing_rest(*a):
    raise FetchError("REST is down")


def test_held_trades_are_applied_once_however_often_holds_are_released(instance, tmp_path, monkeypatch):
    clock = FakeClock()
    feed = make_feed(instance, tmp_path, monkeypatch, "[ingest]\nrepair_hold_s = 0.0\n", fetch=failing_rest,
                     clock=clock)
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    for k in (2, 3):                                    # two reconnects while REST stays down
        feed.schedule_gap_repairs()
        feed.on_message(trade(T0 + k * 1_000, 100.0, 1.0))   # held
        feed.run_repairs()                              # fails: the hold is released
        clock.advance(3.0)
    feed.repairs["KRW-BTC"].due = 0.0
    feed.fetch = lambda *a: (np.zeros(0, CANDLE_DTYPE), 0)   # REST back, with nothing to say
    feed.run_repairs()
    rec = feed.rings["30m"].read_last(0, 1)[0][0]
    assert (rec["v"], rec["n"]) == (3.0, 3) and "KRW-BTC" not in feed.repairs


def test_a_gap_asked_for_during_a_fetch_is_not_lost(instance, tmp_path, monkeypatch):
    t = T0 // 1000 // 1800 * 1800
    calls = []

    def rest(code, unit, since, pages):
        calls.append(since)
        if len(calls) == 1:                             # the connection drops and comes back meanwhile
            feed.schedule_gap_repairs()
        rec = np.zeros(1, CANDLE_DTYPE)
        rec[0] = (t, 100.0, 100.0, 100.0, 100.0, 1.0, 100.0, 0, BACKFILLED)
        return rec, T0 + 1_000
    feed = make_feed(instance, tmp_path, monkeypatch, fetch=rest)
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    feed.on_message(trade(T0 + 1_800_000 + 5, 101.0, 1.0))
    feed.on_message(trade(T0 + 2_000, 100.5, 1.0))      # late: a correction repair
    feed.repairs["KRW-BTC"].due = 0.0
    feed.run_repairs()
    rep = feed.repairs.get("KRW-BTC")
    assert rep is not None and rep.hold, "the gap asked for during the fetch was dropped"
    feed.on_message(trade(T0 + 1_800_000 + 50, 102.0, 1.0))  # held until that repair is done
    assert feed.run_repairs() == 1 and len(calls) == 2 and "KRW-BTC" not in feed.repairs
    assert feed.rings["30m"].read_last(0, 1)[0][0]["c"] == 102.0


def test_a_timeframe_added_later_gets_the_same_rows(instance, tmp_path, monkeypatch):
    first = make_feed(instance, tmp_path, monkeypatch, "timeframes = ['30m']\n")
    first.on_message(trade(T0 + 1_000, 100.0, 1.0, code="KRW-ETH"))
    again = make_feed(instance, tmp_path, monkeypatch, "timeframes = ['30m', '4h']\n")
    assert again.rings["4h"].row_of("KRW-ETH") == again.rings["30m"].row_of("KRW-ETH")
    again.on_message(trade(T0 + 2_000, 100.0, 1.0, code="KRW-ETH"))
    assert again.rings["4h"].read_last_of("KRW-ETH", 1)[0]["v"][0] == 1.0


# -- found by a hostile run of the whole system -------------------------------------------------------
def test_a_market_back_in_the_universe_gets_its_gap_repaired(instance, tmp_path, monkeypatch):
    feed = make_feed(instance, tmp_path, monkeypatch, fetch=lambda *a: (np.zeros(0, CANDLE_DTYPE), 0))
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0, code="KRW-ETH"))
    feed.on_message(trade(T0 + 5_000, 100.0, 1.0, code="KRW-ETH"))   # a correction is pending ...
    feed.schedule_repair("KRW-ETH", (T0 + 1_000) // 1000)
    assert feed.set_universe(["KRW-BTC"])                            # ... and ETH leaves: dropped, no retries
    assert "KRW-ETH" not in feed.repairs
    assert feed.set_universe(["KRW-BTC", "KRW-ETH"])                 # back: what it missed comes from REST
    rep = feed.repairs["KRW-ETH"]
    assert rep.hold and rep.since == T0 // 1000 // 1800 * 1800
    feed.on_message(trade(T0 + 9_000_000, 101.0, 1.0, code="KRW-ETH"))
    assert feed.rings["30m"].read_last_of("KRW-ETH", 5)[1] == 1, "a candle was closed over the gap"


def test_a_new_rank_order_is_no_new_universe(ingest):
    assert ingest.set_universe(["KRW-ETH", "KRW-BTC"]) is False


def test_coarse_candles_are_rebuilt_from_every_rest_candle(instance, tmp_path, monkeypatch):
    """An outage longer than the fine ring holds: 4h and 1d come from all the REST candles."""
    day = T0 // 1000 // 86400 * 86400
    rest = np.zeros(144, CANDLE_DTYPE)                      # three whole days of 30m candles; the ring holds 64
    rest["t"] = day + 1800 * np.arange(144)
    rest["o"] = rest["h"] = rest["l"] = rest["c"] = 100.0 + np.arange(144)
    rest["v"], rest["value"], rest["flags"] = 1.0, 100.0, BACKFILLED
    feed = make_feed(instance, tmp_path, monkeypatch, fetch=lambda *a: (rest, (day + 3 * 86400) * 1000 - 1))
    feed.on_message(trade(T0 + 1_000, 100.0, 1.0))
    feed.schedule_gap_repairs()
    assert feed.run_repairs() == 1
    d1, _ = feed.rings["1d"].read_last(0, 10)
    assert list(d1["t"]) == [day, day + 86400, day + 2 * 86400]
    assert list(d1["o"]) == [100.0, 148.0, 196.0] and list(d1["v"]) == [48.0, 48.0, 48.0]
    h4, _ = feed.rings["4h"].read_last(0, 64)
    assert len(h4) == 18 and h4["o"][0] == 100.0 and (h4["v"] == 8.0).all()
    assert feed.rings["30m"].read_last(0, 64)[0]["t"][0] == rest["t"][-64]
