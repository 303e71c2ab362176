"""The engine: entries and exits, the mode rules of seed §9, risk limits, restarts from the ledger."""
from __future__ import annotations

import pytest

from procs.trading.engine import Refused
from shm.trading import ARMED, DISARMED, KILLED

from .conftest import DEAD, FLAT


def test_entry_fill_take_profit_round_trip(rig):
    e = rig.engine
    rig.enter("KRW-BTC", 100_000_000.0)
    p = e.positions["KRW-BTC"]
    assert p.state == "open" and p.entry_tag == "macd_cross_rsi_bb"
    spent = 10_000_000 * 0.15
    assert p.qty * p.avg_price == pytest.approx(min(spent, e.cfg.max_order_krw))
    assert p.tp == pytest.approx(p.avg_price * 1.05) and p.sl == pytest.approx(p.avg_price * 0.975)
    rig.trade("KRW-BTC", 104_000_000.0)          # below TP: nothing
    assert not e.orders
    rig.trade("KRW-BTC", 105_000_000.0)          # TP reached: a market sell...
    [o] = e.orders.values()
    assert (o.side, o.purpose, o.tag) == ("ask", "exit", "take_profit")
    rig.trade("KRW-BTC", 105_100_000.0)          # ...fills on the next trade
    assert "KRW-BTC" not in e.positions
    [(reason, realized, buy, sell, fees)] = rig.rows(
        "SELECT exit_reason, realized, buy_krw, sell_krw, fees FROM positions")
    assert reason == "take_profit"
    assert realized == pytest.approx(sell - buy - fees)
    assert e.cash == pytest.approx(10_000_000 + realized)
    kinds = [r[0] for r in rig.rows("SELECT decision FROM buy_eval")]
    assert kinds == ["order"]


def test_stop_loss_on_a_trade_and_dead_cross_on_close(rig):
    e = rig.engine
    rig.enter("KRW-ETH", 4_000_000.0)
    rig.trade("KRW-ETH", 3_900_000.0)            # -2.5 %: the stop-loss
    rig.trade("KRW-ETH", 3_890_000.0)
    assert rig.rows("SELECT exit_reason FROM positions") == [("stop_loss",)]
    rig.enter("KRW-XRP", 800.0)
    rig.close("KRW-XRP", 805.0, FLAT)            # MACD still above its signal: hold
    assert "KRW-XRP" in e.positions and not e.orders
    rig.close("KRW-XRP", 801.0, DEAD)
    rig.trade("KRW-XRP", 801.0)
    assert rig.rows("SELECT exit_reason FROM positions WHERE market = 'KRW-XRP'") == [("dead_cross",)]
    decisions = [r[0] for r in rig.rows("SELECT decision FROM sell_eval WHERE market = 'KRW-XRP' ORDER BY id")]
    assert decisions[0] == "hold" and decisions[-1].startswith("order ")


def test_disarmed_records_but_sends_nothing(make_rig):
    r = make_rig(arm_on_start=False)
    assert r.engine.mode == DISARMED
    r.trade("KRW-BTC", 100.0e6)
    r.close("KRW-BTC", 100.0e6)
    assert not r.engine.orders and not r.engine.positions
    assert r.rows("SELECT decision FROM buy_eval") == [("dry_run",)]
    assert r.rows("SELECT count(*) FROM orders") == [(0,)]


def test_mode_rules(rig):
    e = rig.engine
    assert e.mode == ARMED
    with pytest.raises(Refused, match="ARMED"):
        e.apply_config("test", "SAFE", None, "t")          # armed -> CONFIG.APPLY refused
    e.disarm("test", "t")
    e.apply_config("test", "SAFE", None, "t")             # allowed once disarmed
    assert e.preset == "SAFE" and e.config_version == 2
    e.arm("test", "t")
    # an open limit order to be cancelled by the kill switch
    o = e._order("KRW-SOL", "bid", "limit", 100_000.0, 0.1, "entry", "manual",
                 e.ledger.new_position("KRW-SOL", 0, 0, "manual", e.market_ms))
    from procs.trading.portfolio import Position
    e.positions["KRW-SOL"] = Position(o.position_id, "KRW-SOL", "pending")
    assert o.is_open
    cancelled = e.kill("test", "t")
    assert e.mode == KILLED and cancelled == [o.identifier] and o.state.value == "cancelled"
    notes = [n["kind"] for n in e.recent]
    assert notes.index("mode") < notes.index("cancelled")   # KILL first, then the cancels
    with pytest.raises(Refused, match="KILLED"):
        e.arm("test", "t")                                   # killed -> ARM refused
    e.disarm("test", "t")                                    # DISARM always allowed (stays KILLED)
    assert e.mode == KILLED
    with pytest.raises(Refused):
        e.exit_positions("all", "test", "t")
    rig.trade("KRW-BTC", 100e6)
    rig.close("KRW-BTC", 100e6)
    assert rig.rows("SELECT decision FROM buy_eval")[-1] == ("refused",)
    e.kill_reset("test", "t")
    assert e.mode == DISARMED
    actions = [r[0] for r in rig.rows("SELECT action FROM trade_audit")]
    assert "mode KILLED -> DISARMED" in actions and "config.apply" in actions


def test_risk_denials_reach_the_timeline_not_the_broker(make_rig):
    r = make_rig(starting_cash=20_000.0)     # 15 % of 20,000 KRW = 3,000 KRW: under Upbit's minimum
    r.trade("KRW-BTC", 100e6)
    r.close("KRW-BTC", 100e6)
    assert not r.engine.orders and r.rows("SELECT count(*) FROM orders") == [(0,)]
    assert r.rows("SELECT decision FROM buy_eval") == [("denied",)]
    assert any(n["kind"] == "deny" and "under_min_total" in n["text"] for n in r.engine.recent)


def test_max_positions_and_one_entry_per_market(make_rig):
    r = make_rig(strategy={"max_positions": 2})
    r.enter("KRW-BTC", 100e6)
    r.close("KRW-BTC", 100e6)                # already holding: no evaluation for an entry
    r.enter("KRW-ETH", 4e6)
    r.trade("KRW-XRP", 800.0)
    r.close("KRW-XRP", 800.0)
    reasons = [row[0] for row in r.rows("SELECT reason FROM buy_eval WHERE market = 'KRW-XRP'")]
    assert reasons[0].startswith("max_positions 2/2")
    assert len(r.engine.positions) == 2


def test_daily_loss_disarms_and_blocks_arm_until_the_kst_day_ends(make_rig):
    r = make_rig(strategy={"order_share": 1.0, "daily_loss_pct": 1.0, "stop_loss_pct": 50.0,
                           "take_profit_pct": 60.0}, max_order_krw=5_000_000.0)
    r.enter("KRW-BTC", 100e6)
    r.trade("KRW-BTC", 97e6)                 # -3 % on half the equity: -1.5 % of the day
    e = r.engine
    assert e.mode == DISARMED and e.risk_flags & 1 and "daily loss" in e.reason
    with pytest.raises(Refused, match="daily loss"):
        e.arm("test", "again")
    e2 = r.restart()                        # survives a restart
    assert e2.mode == DISARMED and e2.risk_flags & 1
    with pytest.raises(Refused):
        e2.arm("test", "after restart")
    r.trade("KRW-BTC", 97e6, dt_ms=24 * 3600 * 1000)   # the next KST day
    e2.arm("test", "new day")
    assert e2.mode == ARMED


def test_drawdown_trip_and_acknowledge(make_rig):
    r = make_rig(strategy={"order_share": 1.0, "stop_loss_pct": 50.0, "take_profit_pct": 60.0,
                           "daily_loss_pct": 90.0}, max_order_krw=5_000_000.0, max_drawdown_pct=2.0)
    r.enter("KRW-BTC", 100e6)
    r.trade("KRW-BTC", 95e6)
    e = r.engine
    assert e.mode == DISARMED and e.risk_flags & 2
    e.arm("test", "acknowledged")
    assert e.mode == ARMED and not e.risk_flags & 2 and e.hwm == pytest.approx(e.equity)


def test_restart_rebuilds_state_and_never_resends(rig):
    e = rig.engine
    rig.enter("KRW-BTC", 100e6)
    rig.trade("KRW-ETH", 4e6)
    rig.close("KRW-ETH", 4e6)                   # entry order accepted, not filled yet
    before = (e.cash, {m: (p.qty, p.avg_price, p.tp, p.sl) for m, p in e.positions.items()}, set(e.orders))
    n_orders = rig.rows("SELECT count(*) FROM orders")
    e2 = rig.restart(crash=True)
    assert e2.mode == ARMED                     # paper broker, arm_on_start
    after = (e2.cash, {m: (p.qty, p.avg_price, p.tp, p.sl) for m, p in e2.positions.items()}, set(e2.orders))
    assert after == before
    rig.trade("KRW-ETH", 4e6)                   # the adopted order fills; nothing is sent again
    assert rig.rows("SELECT count(*) FROM orders") == n_orders
    assert e2.positions["KRW-ETH"].state == "open"


def test_restart_modes(make_rig):
    r = make_rig(arm_on_start=False)
    r.engine.arm("t", "t")
    assert r.restart().mode == DISARMED        # ARMED comes back DISARMED without arm_on_start
    r.engine.kill("t", "t")
    assert r.restart(crash=True).mode == KILLED
    r.engine.kill_reset("t", "t")
    assert r.restart().mode == DISARMED


def test_submitted_but_unanswered_order_is_never_resent(rig):
    e = rig.engine
    e.broker.submit = lambda o: (_ for _ in ()).throw(SystemExit("crash before the broker answered"))
    rig.trade("KRW-BTC", 100e6)
    with pytest.raises(SystemExit):
        rig.close("KRW-BTC", 100e6)
    [(ident, state)] = rig.rows("SELECT identifier, state FROM orders")
    assert state == "submitted"                 # written ahead, committed
    e2 = rig.restart(crash=True)
    [(state2, reason)] = rig.rows("SELECT state, reason FROM orders")
    assert state2 == "rejected" and "never re-sent" in reason
    assert not e2.orders and "KRW-BTC" not in e2.positions


def test_leaving_the_top_n_sells_or_holds(make_rig):
    r = make_rig()
    r.enter("KRW-BTC", 100e6)
    r.engine.on_universe({"KRW-ETH"})
    [o] = r.engine.orders.values()
    assert o.tag == "left_top_n"
    r.trade("KRW-BTC", 100e6)
    assert r.rows("SELECT exit_reason FROM positions") == [("left_top_n",)]
    said = [n["text"] for n in r.engine.recent if n["market"] == "KRW-BTC"]
    assert any("for left_top_n" in t for t in said) and any("closed on left_top_n" in t for t in said)
    h = make_rig(on_leave="hold")
    h.enter("KRW-BTC", 100e6)
    h.engine.on_universe({"KRW-ETH"})
    assert not h.engine.orders and "KRW-BTC" in h.engine.positions
    assert any(n["kind"] == "hold" and "on_leave = hold" in n["text"] for n in h.engine.recent)


def test_duplicate_fill_is_applied_once(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    rig.close("KRW-BTC", 100e6)
    [o] = e.orders.values()
    from procs.trading.broker import BrokerEvent
    ev = BrokerEvent("fill", o.identifier, rig.t + 1, 100e6, 0.001, 50.0, trade_id=77)
    e._apply(ev)
    cash = e.cash
    e.orders[o.identifier] = o if o.is_open else o
    e._apply(ev)
    assert e.cash == cash
    assert rig.rows("SELECT count(*) FROM fills") == [(1,)]


def test_exit_cancels_the_rest_of_a_partly_filled_entry(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    rig.close("KRW-BTC", 100e6)
    rig.trade("KRW-BTC", 100e6, volume=0.001)          # 100,000 KRW of the 1,500,000 KRW buy
    p = e.positions["KRW-BTC"]
    [entry] = e.orders.values()
    assert p.state == "open" and entry.state.value == "partially_filled"
    rig.trade("KRW-BTC", 90e6, volume=0.001)           # stop-loss while the entry is still open
    assert entry.state.value == "cancelled"
    [exit_] = e.orders.values()
    assert exit_.tag == "stop_loss" and exit_.volume == pytest.approx(p.qty)
    rig.trade("KRW-BTC", 90e6)
    assert "KRW-BTC" not in e.positions and e.illegal == 0
    assert rig.rows("SELECT state, exit_reason FROM positions") == [("closed", "stop_loss")]


def test_entries_never_spend_cash_promised_to_open_buys(make_rig):
    r = make_rig(preset="AGGRESSIVE", max_order_krw=5_000_000.0)    # 25 % x 8 positions
    markets = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-DOGE", "KRW-ADA", "KRW-LINK", "KRW-ETC"]
    r.engine.on_universe(set(markets))
    for m in markets:                      # every 30 m candle closes at once: all signals before any fill
        r.trade(m, 1000.0)
    for m in markets:
        r.close(m, 1000.0)
    e = r.engine
    promised = sum(o.price * (1 + e.cfg.fee_rate) for o in e.orders.values())
    assert promised <= 10_000_000 + 1e-6 and len(e.orders) == 4     # 2.5M each: four fit, the rest denied
    for m in markets:
        r.trade(m, 1000.0)
    assert e.cash >= -1e-6
    denied = [row[0] for row in r.rows("SELECT reason FROM buy_eval WHERE decision = 'denied'")]
    assert denied and all(d.startswith(("under_min_total", "insufficient_funds", "exit_would_be_dust")) for d in denied)


def test_a_restart_killed_cancels_what_the_kill_could_not(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    rig.close("KRW-BTC", 100e6)              # an accepted entry, not filled yet
    e.set_mode(KILLED, "test", "crash before the cancels")   # KILL's first step only
    e2 = rig.restart(crash=True)
    assert e2.mode == KILLED and not e2.orders
    rig.trade("KRW-BTC", 100e6)
    assert not e2.positions and rig.rows("SELECT state FROM orders") == [("cancelled",)]


def test_a_market_that_left_while_disarmed_is_sold_on_arm(rig):
    e = rig.engine
    rig.enter("KRW-BTC", 100e6)
    e.disarm("test", "t")
    e.on_universe({"KRW-ETH"})
    assert not e.orders
    e.arm("test", "t")
    [o] = e.orders.values()
    assert o.tag == "left_top_n"


def test_an_entry_that_would_be_dust_at_its_stop_is_denied(make_rig):
    r = make_rig(starting_cash=34_000.0, strategy={"order_share": 0.15})   # 5,100 KRW: 4,972 KRW at -2.5 %
    r.trade("KRW-BTC", 100e6)
    r.close("KRW-BTC", 100e6)
    assert r.rows("SELECT decision, substr(reason, 1, 18) FROM buy_eval") == [("denied", "exit_would_be_dust")]


def test_paper_orders_never_fill_on_trades_printed_before_them(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    rig.close("KRW-BTC", 100e6)
    [o] = e.orders.values()
    e.on_trade("KRW-BTC", o.created_ms - 60_000, 90e6, 1.0, 999)   # a held trade, applied late
    assert o.filled == 0
    rig.trade("KRW-BTC", 100e6)
    assert o.filled > 0


def test_market_time_that_runs_back_is_followed(rig):
    e = rig.engine
    rig.trade("KRW-BTC", 100e6)
    late = e.market_ms
    e.on_trade("KRW-BTC", late - 30 * 86_400_000, 100e6, 1.0, 12345)    # the replay started over
    assert e.market_ms == late - 30 * 86_400_000 and any(n["kind"] == "clock" for n in e.recent)


def test_limit_exit_is_rounded_up_to_the_tick(rig):
    e = rig.engine
    rig.enter("KRW-ETH", 4_000_000.0)
    [ident] = e.exit_positions("krw-eth", "test", "t", limit=4_100_040.0)
    o = e.orders[ident]
    assert (o.ord_type, o.price) == ("limit", 4_101_000.0)     # KRW 1,000 ticks at 1,000,000 and above
    rig.trade("KRW-ETH", 4_101_000.0)                          # a touch is not a fill
    assert o.filled == 0
    rig.trade("KRW-ETH", 4_102_000.0)
    assert "KRW-ETH" not in e.positions


def test_a_risk_trip_sells_everything_then_disarms(make_rig):
    r = make_rig(strategy={"order_share": 0.5, "daily_loss_pct": 1.0, "stop_loss_pct": 50.0,
                           "take_profit_pct": 60.0}, max_order_krw=5_000_000.0)
    r.enter("KRW-BTC", 100e6)
    r.enter("KRW-ETH", 4e6)
    r.trade("KRW-BTC", 97e6)                 # the daily loss limit trips
    e = r.engine
    assert e.mode == DISARMED and "daily loss" in e.reason
    assert sorted(o.tag for o in e.orders.values()) == ["daily_loss", "daily_loss"]
    r.trade("KRW-BTC", 97e6)
    r.trade("KRW-ETH", 4e6)                  # the exits fill although the engine is DISARMED now
    assert not e.positions
    assert r.rows("SELECT DISTINCT exit_reason FROM positions WHERE state = 'closed'") == [("daily_loss",)]
    h = make_rig(strategy={"order_share": 0.5, "daily_loss_pct": 1.0, "stop_loss_pct": 50.0,
                           "take_profit_pct": 60.0}, max_order_krw=5_000_000.0, on_risk_trip="hold")
    h.enter("KRW-BTC", 100e6)
    h.trade("KRW-BTC", 97e6)
    assert h.engine.mode == DISARMED and not h.engine.orders and "KRW-BTC" in h.engine.positions


def test_the_stop_loss_overrides_a_resting_limit_exit(rig):
    e = rig.engine
    rig.enter("KRW-ETH", 4_000_000.0)
    [limit] = e.exit_positions("KRW-ETH", "test", "t", limit=4_400_000.0)
    rig.trade("KRW-ETH", 3_800_000.0)        # through the stop-loss, far below the resting limit
    assert e.orders.get(limit) is None
    assert rig.rows("SELECT state FROM orders WHERE identifier = ?", limit) == [("cancelled",)]
    [o] = e.orders.values()
    assert (o.ord_type, o.tag) == ("market", "stop_loss")


def test_the_reason_follows_mode_changes(rig):
    e = rig.engine
    e.kill("pid 1 uid 0 run x", "fat finger")
    assert e.reason == "KILLED by pid 1 uid 0: fat finger"


def test_commands_refuse_an_absurd_limit_and_strip_control_characters(rig):
    from procs.trading.commands import CommandHandler
    from procs.trading.protocol import Command, CommandError
    rig.enter("KRW-ETH", 4_000_000.0)
    h = CommandHandler(rig.engine, market_data=lambda *a: ([], []), timeline=lambda n: [], health=dict,
                       default_market="KRW-BTC", default_tf="30m", timeframes=("30m",))

    def call(t, payload):
        return h(Command(t, 0.0, "r", None, 1, payload, "pid 1 uid 0"))
    with pytest.raises(CommandError) as err:
        call("POSITION.EXIT", {"market": "KRW-ETH", "price": 1e9})
    assert err.value.code == "INVALID"
    call("KILL.SWITCH", {"reason": "oops\n2026-01-01 fake log line"})
    assert "\n" not in rig.engine.reason and "oops 2026-01-01 fake log line" in rig.engine.reason
    with pytest.raises(CommandError, match="KILLED"):
        call("POSITION.EXIT", {"market": "ALL"})     # "ALL" is all: refused while KILLED, not NOT_FOUND


def test_flatten_replaces_resting_limit_exits_and_each_trip_keeps_its_own_reason(make_rig):
    r = make_rig(strategy={"order_share": 0.3, "daily_loss_pct": 1.0, "stop_loss_pct": 50.0,
                           "take_profit_pct": 60.0}, max_order_krw=5_000_000.0, max_drawdown_pct=1.5)
    r.enter("KRW-BTC", 100e6)
    r.enter("KRW-ETH", 4e6)
    e = r.engine
    [lim] = e.exit_positions("KRW-ETH", "test", "t", limit=7.9e6)    # a limit exit resting far above
    r.trade("KRW-BTC", 93e6)                 # both limits trip on this trade
    assert e.mode == DISARMED
    assert lim not in e.orders and sorted(o.ord_type for o in e.orders.values()) == ["market", "market"]
    assert e._blocked().startswith("daily_loss: daily loss")
    r.trade("KRW-BTC", 93e6, dt_ms=24 * 3600 * 1000)   # a new KST day: only the drawdown limit holds
    assert e._blocked().startswith("drawdown: drawdown")
    e.arm("test", "acknowledged")
    assert any(n["kind"] == "risk" and "acknowledged" in n["text"] for n in e.recent)


def test_a_stop_loss_never_cancels_a_limit_exit_whose_rest_is_dust(make_rig):
    r = make_rig(strategy={"order_share": 0.002, "stop_loss_pct": 2.5})   # a 20,000 KRW position
    r.enter("KRW-ETH", 4_000_000.0)
    e = r.engine
    [lim] = e.exit_positions("KRW-ETH", "test", "t", limit=4_400_000.0)
    p = e.positions["KRW-ETH"]
    r.trade("KRW-ETH", 4_500_000.0, volume=p.qty * 0.8)       # 80 % sold; 4,000 KRW left: dust
    r.trade("KRW-ETH", 3_800_000.0)                            # the stop-loss
    assert lim in e.orders and e.orders[lim].state.value == "partially_filled"
    assert [o.identifier for o in e.orders.values()] == [lim]
