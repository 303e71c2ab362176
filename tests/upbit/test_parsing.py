"""The real recorded Upbit ticker messages parse, in DEFAULT and in SIMPLE form."""
import gzip
import json

from procs.upbit.fields import TICKER, to_default, to_simple
from procs.upbit.parsing import parse_ticker
from tests.helpers import ROOT

REC = ROOT / "data" / "upbit" / "ws" / "ticker_DEFAULT_2025-07-14T054646Z_124mkts.jsonl.gz"


def load():
    with gzip.open(REC, "rt") as f:
        return [json.loads(line) for line in f]


def test_every_recorded_ticker_parses_in_both_formats():
    msgs = load()
    assert len(msgs) == 456 and len({m["code"] for m in msgs}) == 124
    for m in msgs:
        d = parse_ticker(m)
        simple = to_simple(m)
        assert "ty" in simple and "atp24h" in simple and "type" not in simple
        s = parse_ticker(simple)
        assert d is not None and d == s, m["code"]
        assert to_default(simple) == m
        assert d.trade_price > 0 and d.acc_trade_price_24h > 0
    btc = [parse_ticker(m) for m in msgs if m["code"] == "KRW-BTC"]
    assert btc and all(160e6 < t.trade_price < 170e6 for t in btc)  # the 2025-07-14 high


def test_every_documented_ticker_field_has_a_simple_key():
    keys = set().union(*(m.keys() for m in load()))
    assert keys <= set(TICKER), keys - set(TICKER)


def test_a_broken_ticker_is_rejected():
    m = load()[0]
    for bad in ({**m, "trade_price": None}, {**m, "acc_trade_price_24h": float("nan")}, {**m, "trade_timestamp": "x"},
                {k: v for k, v in m.items() if k != "code"}):
        assert parse_ticker(bad) is None
