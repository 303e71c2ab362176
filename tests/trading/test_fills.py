"""The paper fill model and the pre-trade checks that shape an order: a touch is not a fill, a gap
through the limit fills at the trade price, partial fills, fees, tick rounding, the 5,000 KRW minimum."""
from __future__ import annotations

import pytest

from procs.trading import risk
from procs.trading.broker import PaperBroker
from procs.trading.fills import FillModel
from procs.trading.orders import Order, OrderState

M = FillModel(fee_rate=0.0005, slippage_pct=0.1)


def test_limit_touch_is_not_a_fill():
    assert M.match("bid", "limit", 100.0, 1.0, 100.0, 5.0) is None
    assert M.match("ask", "limit", 100.0, 1.0, 100.0, 5.0) is None


def test_limit_gap_through_fills_at_the_trade_price():
    f = M.match("bid", "limit", 100.0, 1.0, 95.0, 5.0)
    assert f.price == 95.0 and f.volume == 1.0 and f.fee == pytest.approx(95.0 * 0.0005)
    f = M.match("ask", "limit", 100.0, 1.0, 104.0, 5.0)
    assert f.price == 104.0 and f.volume == 1.0
    assert M.match("bid", "limit", 100.0, 1.0, 101.0, 5.0) is None   # above a buy limit: no


def test_partial_fill_when_the_trade_is_smaller():
    f = M.match("ask", "limit", 100.0, 3.0, 101.0, 1.25)
    assert f.volume == 1.25
    f = M.match("ask", "market", 0.0, 3.0, 101.0, 1.25)
    assert f.volume == 1.25 and f.price == pytest.approx(101.0 * 0.999)


def test_market_buy_spends_krw_with_slippage_and_fee():
    f = M.match("bid", "price", 0.0, 10_000.0, 200.0, 1000.0)
    assert f.price == pytest.approx(200.2)
    assert f.price * f.volume == pytest.approx(10_000.0)
    assert f.fee == pytest.approx(10_000.0 * 0.0005)
    small = M.match("bid", "price", 0.0, 10_000.0, 200.0, 10.0)   # the trade holds only 10 units
    assert small.volume == 10.0


def test_paper_broker_fills_only_after_the_order_and_over_several_trades():
    b = PaperBroker(M)
    o = Order("smtm-x-1", "KRW-XRP", "ask", "limit", 1000.0, 3.0, "exit", "take_profit", 1, 0)
    o.move(OrderState.SUBMITTED, 0)
    [acc] = b.submit(o)
    o.move(OrderState.ACCEPTED, 0)
    assert acc.kind == "accepted"
    assert b.on_trade("KRW-XRP", 1, 1000.0, 9.0, 1) == []           # touch
    assert b.on_trade("KRW-BTC", 2, 2000.0, 9.0, 2) == []           # another market
    [f1] = b.on_trade("KRW-XRP", 3, 1001.0, 2.0, 3)
    o.add_fill(f1.price, f1.volume, f1.fee, 3)
    [f2] = b.on_trade("KRW-XRP", 4, 1002.0, 5.0, 4)
    assert (f1.volume, f2.volume) == (2.0, 1.0)
    o.add_fill(f2.price, f2.volume, f2.fee, 4)
    assert o.state is OrderState.FILLED and not b.book


@pytest.mark.parametrize("price,tick", [(2_500_000, 1000), (1_000_000, 1000), (999_999, 500), (500_000, 500),
                                        (150_000, 100), (99_999, 50), (50_000, 50), (12_345, 10), (9_999, 5),
                                        (5_000, 5), (4_999, 1), (100, 1), (99.5, 0.01), (1.5, 0.001)])
def test_tick_table(price, tick):
    assert risk.tick_size(price) == tick


def test_rounding_buy_down_sell_up_and_on_grid():
    assert risk.round_to_tick(150_049, "bid") == 150_000
    assert risk.round_to_tick(150_001, "ask") == 150_100
    assert risk.round_to_tick(9_997, "bid") == 9_995 and risk.round_to_tick(9_996, "ask") == 10_000
    assert risk.round_to_tick(150_000, "bid") == 150_000 == risk.round_to_tick(150_000, "ask")
    assert risk.round_to_tick(12.345, "bid") == 12.34
    assert risk.on_tick(150_000) and not risk.on_tick(150_050)
    with pytest.raises(ValueError):
        risk.tick_size(0)


LIM = risk.Limits(min_order_krw=5000, max_order_krw=1_000_000, max_market_krw=2_000_000, fee_rate=0.0005,
                  max_positions=2, daily_loss_pct=3, max_drawdown_pct=10)


def _entry(**kw):
    args = {"market": "KRW-BTC", "krw": 100_000.0, "cash": 1_000_000.0, "open_positions": 0, "pending_entries": 0,
            "has_position": False, "has_open_order": False, "held_krw": 0.0, "lim": LIM}
    return risk.check_entry(**{**args, **kw})


def test_entry_checks():
    assert _entry() == ""
    assert _entry(krw=4_999.0).startswith("under_min_total")
    assert _entry(krw=5_000.0) == ""
    assert _entry(krw=1_000_001.0).startswith("max_order_krw")
    assert _entry(held_krw=1_950_000.0).startswith("max_market_krw")
    assert _entry(open_positions=1, pending_entries=1).startswith("max_positions 2/2")
    assert _entry(has_position=True).startswith("one_entry_per_market")
    assert _entry(cash=100_000.0).startswith("insufficient_funds")   # the fee needs 50 KRW more
    assert _entry(blocked="daily_loss: x") == "daily_loss: x"


def test_exit_checks_and_sizing():
    assert risk.check_exit(volume=0.001, price=1_000_000, has_open_exit=False, lim=LIM).startswith("under_min")
    assert risk.check_exit(volume=0.01, price=1_000_000, has_open_exit=False, lim=LIM) == ""
    assert risk.check_exit(volume=0.01, price=1_000_000, has_open_exit=True, lim=LIM).startswith("exit_pending")
    assert risk.entry_size(10_000_000, 10_000_000, 0.5, LIM) == 1_000_000          # per-order cap
    assert risk.entry_size(10_000_000, 100_000, 0.5, LIM) == pytest.approx(100_000 / 1.0005)   # cash + fee


def test_kst_day_boundary():
    # 2024-11-01 14:59:59 UTC is 23:59:59 KST; a second later the KST day changes
    assert risk.kst_day(1730473199000) == "2024-11-01"
    assert risk.kst_day(1730473200000) == "2024-11-02"
