"""End to end on the real bundled data: replay exchange → ingest → indicator, as processes.

For every bundled market, the 30 m candles ingest builds from the exchange's trades equal
the source candles (o h l c and volume bit for bit, value to float rounding), the 4 h and
1 d roll-ups equal an independent pandas resample of the source, and the EMAs in
``indicators.30m`` equal TA-Lib's on the same closes.
"""

import numpy as np
import pandas as pd
import pytest
import requests

from procs.market.tape import load_dataset
from procs.runtime.roster import STATUS_ROWS
from shm.status import StatusTable
from shm.tables import CANDLES, CLOSED, INDICATORS
from tests.helpers import ALL_MARKETS, ROOT, get_json, wait_for

CAP = 8192


def source_frame(src: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({k: src[k] for k in ("o", "h", "l", "c", "v", "value")})
    df.index = pd.to_datetime(src["t"], unit="s", utc=True)
    return df


def resample(df: pd.DataFrame, rule: str) -> pd.DataFrame:
    out = df.resample(rule, label="left", closed="left").agg(
        {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum", "value": "sum"})
    return out.dropna(subset=["o"])


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Run the whole replay once (as fast as ingest keeps up) and keep the rings for the tests."""
    import uuid

    from shm.segment import unlink_instance
    from tests.helpers import Env
    inst = f"t{uuid.uuid4().hex[:10]}"
    env = Env(inst, tmp_path_factory.mktemp("replay"))
    env.write_overlay(capacity=CAP, speed=0.0)
    try:
        env.start("indicator")
        env.start("exchange")
        base = f"http://127.0.0.1:{env.port}"
        wait_for(lambda: get_json(f"{base}/replay/status"), 30, "the replay exchange to listen")
        env.start("ingest")
        wait_for(lambda: (get_json(f"{base}/replay/status") or {}).get("finished"), 240, "the replay to finish",
                 interval=0.5)
        sent = get_json(f"{base}/replay/status")["frames_sent"]
        status = StatusTable.open(inst, STATUS_ROWS)
        wait_for(lambda: int(status.read("ingest")["msgs_in"]) >= sent, 60, "ingest to read every frame")
        cand = {tf: CANDLES.open(inst, tf, 32, CAP) for tf in ("30m", "4h", "1d")}
        ind = INDICATORS.open(inst, "30m", 32, CAP)
        wait_for(lambda: ind.counts().sum() == cand["30m"].counts().sum()
                 and np.array_equal(ind.seqs() % 2, ind.seqs() * 0), 30, "the indicator to catch up")
        yield env, cand, ind, status, base
    finally:
        env.stop_all()
        unlink_instance(inst)



SRC = load_dataset(ROOT / "data" / "upbit", ALL_MARKETS)


@pytest.mark.parametrize("market", ALL_MARKETS)
def test_30m_candles_equal_the_source(replayed, market):
    _, cand, _, _, _ = replayed
    ring = cand["30m"]
    recs, cnt = ring.read_last(ring.row_of(market), CAP)
    src = SRC[market]
    assert cnt == len(src)
    for f in ("t", "o", "h", "l", "c", "v"):
        assert np.array_equal(recs[f], src[f]), f
    assert np.max(np.abs(recs["value"] - src["value"]) / src["value"]) <= 1e-12
    assert (recs["flags"][:-1] & CLOSED).all()


@pytest.mark.parametrize("market", ALL_MARKETS)
@pytest.mark.parametrize("tf, rule", [("4h", "4h"), ("1d", "1D")])
def test_rollups_equal_a_pandas_resample(replayed, market, tf, rule):
    _, cand, _, _, _ = replayed
    ring = cand[tf]
    recs, _ = ring.read_last(ring.row_of(market), CAP)
    exp = resample(source_frame(SRC[market]), rule)
    assert np.array_equal(recs["t"], exp.index.astype("int64") // 10**9)
    for f in ("o", "h", "l", "c"):
        assert np.array_equal(recs[f], exp[f].to_numpy()), f
    for f in ("v", "value"):
        assert np.max(np.abs(recs[f] - exp[f].to_numpy()) / exp[f].to_numpy()) <= 1e-12, f


@pytest.mark.parametrize("market", ALL_MARKETS)
def test_indicator_ring_is_aligned_and_equals_talib(replayed, market):
    _, cand, ind, _, _ = replayed
    row = cand["30m"].row_of(market)
    c, cnt = cand["30m"].read_last(row, CAP)
    i, icnt = ind.read_last(ind.row_of(market), CAP)
    assert icnt == cnt and np.array_equal(i["t"], c["t"])
    from tests.oracles import COLUMNS, rel_err, talib_reference
    ref = talib_reference(c["c"])
    for field in COLUMNS:
        assert rel_err(i[field], ref[field]) <= 1e-9, field


def test_signals_table_holds_the_buyable_set(replayed):
    from shm.signals import SignalsTable
    from tests.oracles import expected_signals
    env, cand, _, _, _ = replayed
    rows, _ = SignalsTable.open(env.instance, 32).read_all()
    by_code = {bytes(r["code"]).decode(): r for r in rows if r["code"]}
    assert set(by_code) == set(ALL_MARKETS)
    for m in ALL_MARKETS:
        c = SRC[m]["c"][:-1]  # the newest candle is still open: only closed candles are evaluated
        ons, active = expected_signals(c)
        r = by_code[m]
        assert bool(r["active"]) == active, m
        if active:
            assert int(r["since_t"]) == int(SRC[m]["t"][ons[-1]]) and float(r["price"]) == float(c[ons[-1]])
        assert int(r["evaluated_t"]) == int(SRC[m]["t"][-2])


def test_counters_say_nothing_was_dropped(replayed):
    _, _, _, status, base = replayed
    ing = status.read("ingest")
    assert int(ing["dropped"]) == 0 and int(ing["errors"]) == 0
    assert int(ing["msgs_out"]) > 0.9 * get_json(f"{base}/replay/status")["trades"]  # the rest came from REST


def test_rest_candles_page_like_upbit(replayed):
    _, _, _, _, base = replayed
    src = SRC["KRW-BTC"]
    r = requests.get(f"{base}/v1/candles/minutes/30", params={"market": "KRW-BTC", "count": 200}, timeout=5)
    assert r.status_code == 200 and r.headers["Remaining-Req"].startswith("group=candle; min=")
    page = r.json()
    assert len(page) == 200 and page[0]["candle_date_time_utc"] > page[-1]["candle_date_time_utc"]  # newest first
    # page backwards with `to` = the oldest start of the previous page (exclusive)
    r2 = requests.get(f"{base}/v1/candles/minutes/30", timeout=5,
                      params={"market": "KRW-BTC", "count": 3, "to": page[-1]["candle_date_time_utc"]}).json()
    starts = [x["candle_date_time_utc"] for x in r2]
    assert starts[0] < page[-1]["candle_date_time_utc"] and len(starts) == 3
    k = int(np.searchsorted(src["t"], pd.Timestamp(starts[0], tz="UTC").timestamp()))
    assert r2[0]["trade_price"] == src["c"][k]
    assert r2[0]["candle_acc_trade_volume"] == pytest.approx(src["v"][k], rel=1e-12)
    h4 = requests.get(f"{base}/v1/candles/minutes/240", params={"market": "KRW-ETH", "count": 2,
                      "to": "2024-11-01T09:00:00+09:00"}, timeout=5).json()
    assert [x["candle_date_time_utc"] for x in h4] == ["2024-10-31T20:00:00", "2024-10-31T16:00:00"]
    for params, code in (({"market": "KRW-BTC", "count": 201}, 400), ({"market": "KRW-NOPE"}, 404), ({}, 400)):
        assert requests.get(f"{base}/v1/candles/minutes/30", params=params, timeout=5).status_code == code
    assert requests.get(f"{base}/v1/candles/minutes/7", params={"market": "KRW-BTC"}, timeout=5).status_code == 400
    markets = requests.get(f"{base}/v1/market/all", params={"is_details": "true"}, timeout=5).json()
    assert len(markets) == 431 and "market_event" in markets[0]
