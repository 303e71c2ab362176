"""EMA equals TA-Lib's on the real data of every bundled market, in batch and incrementally
(candle by candle, with provisional open-candle updates in between)."""
import numpy as np
import pytest
import talib

from procs.indicators import Ema, ema
from procs.replay_data import load_dataset
from tests.conftest import ALL_MARKETS, ROOT

DATA = load_dataset(ROOT / "data" / "upbit", ALL_MARKETS)


def rel_err(a, b):
    ok = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), ok), "NaN pattern differs from TA-Lib's lookback"
    return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))


@pytest.mark.parametrize("market", ALL_MARKETS)
@pytest.mark.parametrize("period", [12, 26])
def test_batch_ema_equals_talib(market, period):
    c = DATA[market]["c"]
    assert rel_err(ema(c, period), talib.EMA(c, timeperiod=period)) <= 1e-9


@pytest.mark.parametrize("market", ALL_MARKETS)
def test_incremental_ema_with_open_candle_updates_equals_talib(market):
    candles = DATA[market]
    closes, lows, highs = candles["c"], candles["l"], candles["h"]
    fast, slow = Ema(12), Ema(26)
    out_f = np.empty(len(closes))
    out_s = np.empty(len(closes))
    for i, c in enumerate(closes):
        # the open candle is updated several times (prices of its path) before it closes
        for p in (lows[i], highs[i], c):
            prov_f, prov_s = fast.peek(p), slow.peek(p)
        out_f[i], out_s[i] = fast.update(c), slow.update(c)
        assert (np.isnan(prov_f) and np.isnan(out_f[i])) or prov_f == out_f[i]
        assert (np.isnan(prov_s) and np.isnan(out_s[i])) or prov_s == out_s[i]
    assert rel_err(out_f, talib.EMA(closes, 12)) <= 1e-9
    assert rel_err(out_s, talib.EMA(closes, 26)) <= 1e-9
