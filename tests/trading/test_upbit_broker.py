"""The Upbit broker against the replay exchange's exchange API (real HTTP, real JWT), driven in lockstep with
the replayed trades: the paper broker and the Upbit broker book identical ledgers on the same window; every
order fault ends with the order known (adopted, or rejected as never placed) and the account equal to the
exchange's; KILL with 20 open orders cancels all through the batch cancel and sends nothing after; a restart
reconciles, and what the ledger cannot explain keeps the engine DISARMED."""
from __future__ import annotations

import time

import pytest

from procs.market.indicators import IndicatorSet
from procs.runtime.config import TraderConfig
from procs.trading.broker import PaperBroker
from procs.trading.engine import Engine, Refused
from procs.trading.fills import FillModel
from procs.trading.ledger import Ledger
from procs.trading.upbit_broker import UpbitBroker
from shm.tables import INDICATOR_DTYPE
from shm.trading import ARMED, DISARMED, KILLED
from tests.helpers import ExchangeThread

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
COLUMNS = INDICATOR_DTYPE.names[1:]
#: trade often: every close of an up-trend buys, 0.5 % either way sells
CHURN = {"preset": "AGGRESSIVE", "strategy": {"rule": "macd_above", "take_profit_pct": 0.5, "stop_loss_pct": 0.5,
                                              "daily_loss_pct": 50.0, "max_positions": 4, "order_share": 0.2},
         "max_drawdown_pct": 50.0}


def config(**kw) -> TraderConfig:
    upbit = {"poll_s": 0.0, "unknown_grace_s": 0.0, "refresh_s": 0.05, "order_timeout_s": 0.5, **kw.pop("upbit", {})}
    return TraderConfig.model_validate({**CHURN, "arm_on_start": True, "upbit": upbit, **kw})


class Session:
    """One engine over the replay window: every trade of the tape in order (through the exchange first, when
    there is one: it matches orders before anyone hears of the trade, as the replay loop does), and each
    market's 30-minute candle closed, with its indicators, when the first trade of the next one arrives."""

    def __init__(self, path, broker, cfg: TraderConfig, ex: ExchangeThread):
        self.ex, self.cfg = ex, cfg
        self.engine = Engine(cfg, Ledger(path), broker, wall_ns=time.time_ns)
        self.engine.on_universe(set(MARKETS))
        self.ind = {m: IndicatorSet() for m in MARKETS}
        self.prev: dict[str, dict | None] = dict.fromkeys(MARKETS)
        self.bucket: dict[str, tuple[int, float]] = {}
        self.i = 0

    def step(self, through_exchange: bool) -> bool:
        tape = self.ex.tape
        if self.i >= len(tape.trades):
            return False
        rec = tape.trades[self.i]
        self.i += 1
        if through_exchange:
            assert self.ex.trade()["seq_id"] == rec["seq_id"]
        m = tape.markets[int(rec["market"])]
        ts, price = int(rec["ts"]), float(rec["price"])
        self.engine.on_trade(m, ts, price, float(rec["volume"]), int(rec["seq_id"]))
        b = ts // 1000 // 1800 * 1800
        last = self.bucket.get(m)
        if last is not None and last[0] != b:
            cur = dict(zip(COLUMNS, self.ind[m].update(last[1]), strict=True))
            if self.prev[m] is not None:
                self.engine.on_candle_close(m, last[0], last[1], self.prev[m], cur)
            self.prev[m] = cur
        self.bucket[m] = (b, price)
        return True


def upbit_broker(ex: ExchangeThread, cfg: TraderConfig, **kw) -> UpbitBroker:
    return UpbitBroker(ex.client(timeout_s=cfg.upbit.order_timeout_s), cfg.upbit, fee_rate=cfg.fee_rate,
                       min_order_krw=cfg.min_order_krw, markets=tuple(MARKETS), **kw)


def rows(engine: Engine, sql: str) -> list[tuple]:
    return [tuple(r) for r in engine.ledger.query(sql)]


def ledger_view(engine: Engine) -> dict:
    """The ledger, comparable across runs (identifiers by their sequence number; trade ids are the broker's)."""
    orders = [(r[0].rsplit("-", 1)[1], *r[1:]) for r in rows(engine, (
        "SELECT identifier, market, side, ord_type, price, volume, purpose, tag, position_id, state, filled,"
        " filled_krw, fee FROM orders ORDER BY rowid"))]
    fills = [(r[0].rsplit("-", 1)[1], *r[1:]) for r in rows(engine, (
        "SELECT identifier, market, side, price, volume, fee, t_ms FROM fills ORDER BY id"))]
    positions = rows(engine, "SELECT market, state, qty, avg_price, cost, exit_reason, opened_ms, closed_ms, buy_krw,"
                             " sell_krw, fees, realized FROM positions ORDER BY id")
    return {"orders": orders, "fills": fills, "positions": positions, "account": engine.ledger.account()}


def exchange_holdings(ex: ExchangeThread) -> tuple[float, dict[str, float]]:
    acct = ex.exchange.account
    krw = acct.balances["KRW"].balance + acct.balances["KRW"].locked
    return krw, {f"KRW-{c}": b.balance + b.locked for c, b in acct.balances.items() if c != "KRW"}


def assert_account_matches(engine: Engine, ex: ExchangeThread) -> None:
    krw, coins = exchange_holdings(ex)
    assert engine.cash == pytest.approx(krw, abs=0.01)
    for m in MARKETS:
        p = engine.positions.get(m)
        assert coins.get(m, 0.0) == pytest.approx(p.qty if p else 0.0, abs=1e-12), m


@pytest.fixture
def ex():
    e = ExchangeThread(MARKETS, "2024-11-01", "2024-11-04")
    yield e
    e.close()


def test_paper_and_upbit_on_replay_book_identical_ledgers(tmp_path, ex):
    cfg = config()
    paper = Session(tmp_path / "paper.sqlite", PaperBroker(FillModel(cfg.fee_rate, cfg.slippage_pct)), cfg, ex)
    broker = upbit_broker(ex, cfg)
    live = Session(tmp_path / "upbit.sqlite", broker, cfg, ex)
    assert (paper.engine.mode, live.engine.mode) == (ARMED, DISARMED)   # never ARMED at start with a real broker
    live.engine.arm("test", "reconciled")                               # the account matches: ARM allowed
    while live.step(through_exchange=True):
        assert paper.step(through_exchange=False)
    a, b = ledger_view(paper.engine), ledger_view(live.engine)
    assert len(a["orders"]) >= 30 and len(a["fills"]) >= 30, "the window must trade"
    assert a == b
    assert_account_matches(live.engine, ex)
    assert live.engine.account_check("end") == []
    assert len(broker.round_trips_us) == len(b["orders"])


def _order_then_trade(s: Session, market: str, fault: str, seconds: float = 0.0, count: int = 1):
    """Arm a fault on the exchange, make the engine buy ``market`` at market now, then replay trades."""
    s.ex.exchange.faults.apply({"type": fault, "count": count, "seconds": seconds})
    e = s.engine
    pid = e.ledger.new_position(market, 0, 0, "test", e.market_ms)
    from procs.trading.portfolio import Position
    e.positions[market] = Position(pid, market, "pending")
    return e._order(market, "bid", "price", 200_000.0, 0.0, "entry", "test", pid)


def _warm(s: Session, n: int = 40) -> None:
    for _ in range(n):
        s.step(through_exchange=True)


@pytest.mark.parametrize("fault,seconds,outcome", [
    ("order_drop", 0.0, "filled"),        # placed, the connection dropped: unknown, found, adopted
    ("order_500", 0.0, "filled"),         # placed, 500: unknown, found, adopted
    ("order_slow", 1.5, "filled"),        # placed, answered after the client's timeout: unknown, adopted
    ("order_hold", 1.5, "rejected"),      # the client gave up before it was placed: never placed
    ("order_429", 0.0, "rejected"),       # not placed: looked up, not found, rejected
    ("order_reject", 0.0, "rejected"),    # an Upbit error: rejected at once
])
def test_order_faults_end_known_and_balanced(tmp_path, ex, fault, seconds, outcome):
    cfg = config()
    s = Session(tmp_path / "l.sqlite", upbit_broker(ex, cfg), cfg, ex)
    _warm(s)
    o = _order_then_trade(s, "KRW-BTC", fault, seconds)
    if fault in ("order_reject",):
        assert o.state.value == "rejected"
    else:
        assert o.state.value == "unknown" and "KRW-BTC" in s.engine.positions   # never re-sent, cash held back
    deadline = time.monotonic() + 20
    while o.is_open and time.monotonic() < deadline:
        s.step(through_exchange=True)
        s.engine.poll_broker()
        time.sleep(0.005)
    assert o.state.value == outcome, o.reason
    placed = [x for x in ex.exchange.account.orders.values() if x.identifier == o.identifier]
    assert len(placed) == (1 if outcome == "filled" else 0)        # never twice, never lost
    assert_account_matches(s.engine, ex)
    assert s.engine.account_check("end") == []


def test_partial_fill_then_stall_and_duplicate_fill_notifications(tmp_path, ex):
    cfg = config()
    s = Session(tmp_path / "l.sqlite", upbit_broker(ex, cfg), cfg, ex)
    _warm(s)
    ex.exchange.faults.apply({"type": "fill_duplicate", "count": 3})
    o = _order_then_trade(s, "KRW-ETH", "order_partial", 0.0)
    for _ in range(60):
        s.step(through_exchange=True)
    assert o.state.value == "partially_filled" and len(ex.exchange.account.orders[o.broker_id].trades) == 2
    # listed twice at the exchange, booked once
    assert len(rows(s.engine, f"SELECT * FROM fills WHERE identifier = '{o.identifier}'")) == 1
    s.engine.cancel_order(o.identifier, "test")           # the stalled rest is cancelled; the fill stays booked
    assert o.state.value == "cancelled" and s.engine.positions["KRW-ETH"].qty == pytest.approx(o.filled)
    assert_account_matches(s.engine, ex)


def test_kill_with_20_open_orders_cancels_all_and_sends_nothing_after(tmp_path, ex):
    cfg = config(strategy={**CHURN["strategy"], "max_positions": 30}, max_market_krw=5e6)
    broker = upbit_broker(ex, cfg)
    s = Session(tmp_path / "l.sqlite", broker, cfg, ex)
    s.engine.arm("test", "t")
    _warm(s)
    e = s.engine
    from procs.trading.portfolio import Position
    from procs.trading.risk import round_to_tick
    made = []
    for k in range(20):       # 20 resting limit buys far below the market, over the four markets
        m = MARKETS[k % 4]
        pid = e.ledger.new_position(m, 0, 0, "test", e.market_ms)
        e.positions.setdefault(m, Position(pid, m, "pending"))
        price = round_to_tick(e.last_price[m] * 0.5, "bid")
        made.append(e._order(m, "bid", "limit", price, round(60_000 / price, 8), "entry", "test",
                             e.positions[m].id))
    assert len(ex.exchange.account.open_orders()) == 20 and len(e.orders) == 20
    cancelled = e.kill("test", "twenty open")
    assert e.mode == KILLED and sorted(cancelled) == sorted(o.identifier for o in made)
    assert not ex.exchange.account.open_orders() and not e.orders                 # verified at the exchange
    assert all(ex.exchange.account.find(None, o.identifier).state == "cancel" for o in made)
    assert ex.exchange.private.limits.sent_log[-1][1] != "order"                  # batch, then reads
    placed = len(ex.exchange.account.orders)
    for _ in range(400):                  # signals keep coming: nothing is sent while KILLED
        s.step(through_exchange=True)
    assert len(ex.exchange.account.orders) == placed
    with pytest.raises(Refused, match="KILLED"):
        e.arm("test", "t")
    assert_account_matches(e, ex)


def test_restart_reconciles_and_refuses_arm_on_what_it_cannot_explain(tmp_path, ex):
    cfg = config()
    path = tmp_path / "l.sqlite"
    s = Session(path, upbit_broker(ex, cfg), cfg, ex)
    s.engine.arm("test", "t")
    while len(rows(s.engine, "SELECT * FROM fills")) < 6:
        s.step(through_exchange=True)
    # a crash between the ledger commit and the POST: the row is there, the exchange never heard of it
    e = s.engine
    free = next(m for m in MARKETS if m not in e.positions)
    pid = e.ledger.new_position(free, 0, 0, "test", e.market_ms)
    from procs.trading.orders import Order, OrderState
    lost = Order(f"smtm-{e.run_id}-999", free, "bid", "price", 100_000.0, 0.0, "entry", "test", pid,
                 e.market_ms, wall_ns=time.time_ns())
    lost.move(OrderState.SUBMITTED, e.market_ms)
    e.ledger.insert_order(lost, lost.wall_ns)
    e.ledger.commit()
    e.ledger.db.close()
    s2 = Session(path, upbit_broker(ex, cfg), cfg, ex)     # the restart, as supervisord would
    s2.i, s2.bucket, s2.prev, s2.ind = s.i, s.bucket, s.prev, s.ind
    e2 = s2.engine
    assert e2.mode == DISARMED and e2.reconcile_problems == []
    state = rows(e2, f"SELECT state FROM orders WHERE identifier = '{lost.identifier}'")
    assert state == [("unknown",)]            # not found once: asked again (a request could still be travelling)
    with pytest.raises(Refused, match="unknown"):
        e2.arm("test", "t")
    deadline = time.monotonic() + 10
    while e2.orders and time.monotonic() < deadline:
        e2.poll_broker()
        time.sleep(0.05)
    assert rows(e2, f"SELECT state FROM orders WHERE identifier = '{lost.identifier}'") == [("rejected",)]
    assert not any(o.identifier == lost.identifier for o in ex.exchange.account.orders.values())
    assert_account_matches(e2, ex)
    e2.arm("test", "reconciled")
    # an order placed behind the trader's back: ARM is refused, with the reason
    e2.disarm("test", "t")
    ex.client().place({"market": "KRW-XRP", "side": "bid", "ord_type": "price", "price": "10000",
                       "identifier": "manual-1"})
    with pytest.raises(Refused, match="manual-1.*not in the ledger"):
        e2.arm("test", "t")
    assert e2.mode == DISARMED and "reconcile" in [n["kind"] for n in e2.recent]


def test_no_keys_no_arm(tmp_path, ex):
    cfg = config()
    broker = upbit_broker(ex, cfg)
    s = Session(tmp_path / "l.sqlite", broker, cfg, ex)
    broker.client.creds = None            # the keys gone (UPBIT_ACCESS_KEY / UPBIT_SECRET_KEY unset at a restart)
    with pytest.raises(Refused, match="UPBIT_ACCESS_KEY"):
        s.engine.arm("test", "t")
    assert s.engine.mode == DISARMED
    from procs.trading.upbit_broker import UpbitBroker as B
    assert B(broker.client, cfg.upbit, fee_rate=0.0005, min_order_krw=5000).starting_cash() is None   # at once
