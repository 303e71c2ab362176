"""Buy signals on real data: the evaluator, fed candle by candle with our indicators, agrees with
an independent computation over TA-Lib's arrays for every bundled market."""
import numpy as np
import pytest
import talib

from procs.config import ConfigError, load_config
from procs.indicators import IndicatorSet
from procs.replay_data import load_dataset
from procs.signals import SignalState, evaluate
from tests.conftest import ALL_MARKETS, ROOT

DATA = load_dataset(ROOT / "data" / "upbit", ALL_MARKETS)
COLS = ("ema_fast", "ema_slow", "rsi", "macd", "macd_signal", "macd_hist", "bb_mid", "bb_upper", "bb_lower")


def expected_signals(c: np.ndarray, rsi_max: float = 70.0, rsi_filter: bool = True):
    """(on-times as candle indices, final active) from TA-Lib arrays, written independently."""
    m, s, _ = talib.MACD(c, 12, 26, 9)
    r = talib.RSI(c, 14)
    _, _, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    active, ons = False, []
    for i in range(1, len(c)):
        if np.isnan([m[i - 1], s[i - 1], m[i], s[i], r[i - 1], r[i], lo[i - 1], lo[i]]).any():
            continue
        if active:
            active = not m[i] < s[i]
        elif m[i - 1] <= s[i - 1] and m[i] > s[i] and (not rsi_filter or (r[i] < rsi_max and c[i] > lo[i])):
            active = True
            ons.append(i)
    return ons, active


@pytest.mark.parametrize("market", ALL_MARKETS)
@pytest.mark.parametrize("rule", ["macd_cross_rsi_bb", "macd_cross"])
def test_signals_match_an_independent_computation(market, rule):
    c = DATA[market]["c"]
    ind, st, ons = IndicatorSet(), SignalState(), []
    for i, close in enumerate(c):
        vals = ind.update(float(close))
        if evaluate(st, i, float(close), dict(zip(COLS, vals)), (rule,), 70.0) and st.active:
            ons.append(i)
    exp_ons, exp_active = expected_signals(c, rsi_filter=(rule == "macd_cross_rsi_bb"))
    assert ons == exp_ons and st.active == exp_active
    assert len(ons) > 10  # the real data does produce signals


def test_unknown_rule_is_a_config_error(tmp_path):
    p = tmp_path / "o.toml"
    p.write_text('[signals]\nrules = ["moon"]\n')
    with pytest.raises(ConfigError, match=r"signals.rules\[0\]"):
        load_config("replay", overlay=p)
