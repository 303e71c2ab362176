"""Every indicator equals TA-Lib's on the real data of every bundled market (relative error
<= 1e-9 after warm-up, NaN exactly where TA-Lib's lookback gives none), computed in batch and
through the incremental path candle by candle, with open-candle updates in between."""
import numpy as np
import pytest
import talib

from procs.market.indicators import IndicatorSet, bbands, ema, macd, rsi
from procs.market.tape import load_dataset
from tests.helpers import ALL_MARKETS, ROOT
from tests.oracles import COLUMNS, rel_err, talib_reference

DATA = load_dataset(ROOT / "data" / "upbit", ALL_MARKETS)
@pytest.mark.parametrize("market", ALL_MARKETS)
def test_batch_indicators_equal_talib(market):
    c = DATA[market]["c"]
    ref = talib_reference(c)
    m, s, h = macd(c)
    up, mid, lo = bbands(c)
    ours = {"ema_fast": ema(c, 12), "ema_slow": ema(c, 26), "rsi": rsi(c), "macd": m, "macd_signal": s,
            "macd_hist": h, "bb_mid": mid, "bb_upper": up, "bb_lower": lo}
    for k in COLUMNS:
        assert rel_err(ours[k], ref[k]) <= 1e-9, k


@pytest.mark.parametrize("market", ALL_MARKETS)
def test_incremental_with_open_candle_updates_equals_talib(market):
    candles = DATA[market]
    closes, lows, highs = candles["c"], candles["l"], candles["h"]
    ind = IndicatorSet()
    out = np.empty((len(closes), len(COLUMNS)))
    for i, c in enumerate(closes):
        # the open candle is updated several times (prices of its path) before it closes;
        # a provisional value never disturbs the state, and the last one equals the closed value
        for p in (lows[i], highs[i], c):
            prov = ind.peek(p)
        out[i] = ind.update(c)
        assert np.array_equal(np.isnan(prov), np.isnan(out[i])) and np.allclose(prov, out[i], rtol=0, atol=0,
                                                                                  equal_nan=True)
    ref = talib_reference(closes)
    for j, k in enumerate(COLUMNS):
        assert rel_err(out[:, j], ref[k]) <= 1e-9, k


def test_near_zero_variance_follows_talib():
    # KRW-SHIB trades near 0.03 KRW: its 20-candle variance falls near TA-Lib's zero threshold
    c = DATA["KRW-SHIB"]["c"]
    up, mid, lo = bbands(c)
    tup, tmid, tlo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    assert rel_err(up, tup) <= 1e-9 and rel_err(lo, tlo) <= 1e-9


@pytest.mark.parametrize("periods", [{}, {"ema_fast": 5, "ema_slow": 50, "rsi_period": 30, "macd_fast": 3,
                                          "macd_slow": 10, "macd_signal": 40, "bb_period": 60, "bb_k": 1.5}])
def test_the_steady_state_path_equals_the_components_bit_for_bit(periods):
    """IndicatorSet.update takes one function for all nine values once everything is seeded: the same values,
    to the last bit, as each indicator's own update (which the TA-Lib tests above hold)."""
    from procs.market.indicators import BBands, Ema, Macd, Rsi
    from procs.runtime.config import IndicatorConfig
    p = {**IndicatorConfig().periods(), **periods}
    for market in ("KRW-BTC", "KRW-DOGE"):
        closes = DATA[market]["c"].tolist()
        fast, slow, r = Ema(p["ema_fast"]), Ema(p["ema_slow"]), Rsi(p["rsi_period"])
        m, bb = Macd(p["macd_fast"], p["macd_slow"], p["macd_signal"]), BBands(p["bb_period"], p["bb_k"])
        s = IndicatorSet(**p)
        for c in closes:
            up, mid, lo = bb.update(c)
            want = (fast.update(c), slow.update(c), r.update(c), *m.update(c), mid, up, lo)
            assert np.array_equal(s.peek(c + 1.0), s.peek(c + 1.0), equal_nan=True)   # peeking changes nothing
            got = s.update(c)
            assert np.array_equal(np.array(got), np.array(want), equal_nan=True), (market, c)
