"""Buy signals on real data: the evaluator, fed candle by candle with our indicators, agrees with
an independent computation over TA-Lib's arrays for every bundled market."""
import pytest

from procs.market.indicators import IndicatorSet
from procs.market.signals import SignalState, evaluate
from procs.market.tape import load_dataset
from procs.runtime.config import ConfigError
from procs.runtime.loader import load_config
from tests.helpers import ALL_MARKETS, ROOT
from tests.oracles import COLUMNS, expected_signals

DATA = load_dataset(ROOT / "data" / "upbit", ALL_MARKETS)
@pytest.mark.parametrize("market", ALL_MARKETS)
@pytest.mark.parametrize("rule", ["macd_cross_rsi_bb", "macd_cross"])
def test_signals_match_an_independent_computation(market, rule):
    c = DATA[market]["c"]
    ind, st, ons = IndicatorSet(), SignalState(), []
    for i, close in enumerate(c):
        vals = ind.update(float(close))
        if evaluate(st, i, float(close), dict(zip(COLUMNS, vals)), (rule,), 70.0) and st.active:
            ons.append(i)
    exp_ons, exp_active = expected_signals(c, rsi_filter=(rule == "macd_cross_rsi_bb"))
    assert ons == exp_ons and st.active == exp_active
    assert len(ons) > 10  # the real data does produce signals


def test_unknown_rule_is_a_config_error(tmp_path):
    p = tmp_path / "o.toml"
    p.write_text('[signals]\nrules = ["moon"]\n')
    with pytest.raises(ConfigError, match=r"signals.rules\[0\]"):
        load_config("replay", overlay=p)
