"""Surge alerts on the real recorded data: the vectorized rule equals a plain loop over every candle, and the
alerts it raises on the bundled 12 markets (2024-10-23 .. 2025-01-27, 30-minute candles) are listed."""
import datetime

import numpy as np
import pytest

from procs.market.surge import SurgeRule, surge_at, surge_mask
from procs.market.tape import load_dataset
from tests.helpers import ROOT


def _oracle(c: np.ndarray, rule: SurgeRule) -> np.ndarray:
    out = np.zeros(len(c), bool)
    w, b = rule.window, rule.baseline
    for i in range(w + b - 1, len(c)):
        ret = (c["c"][i] / c["o"][i - w + 1] - 1) * 100
        base = c["value"][i - w - b + 1:i - w + 1].mean() * w
        out[i] = base > 0 and ret >= rule.min_return_pct and c["value"][i - w + 1:i + 1].sum() / base >= \
            rule.min_value_ratio
    return out


@pytest.fixture(scope="module")
def data():
    return load_dataset(ROOT / "data" / "upbit")


def test_the_rule_equals_a_plain_loop_on_every_market(data):
    for rule in (SurgeRule(), SurgeRule(window=1, baseline=6, min_return_pct=2.0, min_value_ratio=2.0)):
        for market, c in data.items():
            assert (surge_mask(c, rule) == _oracle(c, rule)).all(), (market, rule)
            judged = surge_at(c, rule)
            assert judged["t"] == int(c["t"][-1]) and judged["fired"] == bool(surge_mask(c, rule)[-1])


def test_the_alerts_on_the_recorded_markets(data):
    """The default rule (5 % in two 30-minute candles on 3x the traded value of the 12 hours before) raises 135
    alerts (a market's first firing candle after one that did not) on the 12 bundled markets; KRW-BTC's only one
    is the rebound of 2024-12-03 14:30 UTC after the martial-law crash, when eight of the twelve fired together."""
    starts = {}
    for market, c in sorted(data.items()):
        mask = surge_mask(c)
        first = mask & ~np.r_[False, mask[:-1]]
        starts[market] = [datetime.datetime.fromtimestamp(int(t), datetime.UTC).strftime("%Y-%m-%d %H:%M")
                          for t in c["t"][first]]
    for market, times in starts.items():
        print(f"{market}: {len(times)} alerts: {', '.join(times)}")
    assert sum(len(t) for t in starts.values()) == 135
    assert starts["KRW-BTC"] == ["2024-12-03 14:30"]
    assert sorted(m for m, t in starts.items() if "2024-12-03 14:30" in t) == \
        ["KRW-ADA", "KRW-BTC", "KRW-DOGE", "KRW-ETC", "KRW-ETH", "KRW-SHIB", "KRW-SOL", "KRW-XRP"]


def test_no_reference_no_alert_and_bad_rules_are_refused():
    c = np.zeros(30, dtype=[("t", "<i8"), ("o", "<f8"), ("c", "<f8"), ("value", "<f8")])
    c["o"], c["c"] = 100.0, 120.0        # +20 % every candle, but nothing traded before: no reference
    assert not surge_mask(c).any() and surge_at(c) is None
    assert surge_at(c[:10]) is None      # shorter than window + baseline
    with pytest.raises(ValueError, match="window"):
        SurgeRule(window=0)
