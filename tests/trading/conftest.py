"""Engine fixtures: a temporary ledger, the paper broker, an engine over them."""
from __future__ import annotations

import itertools
import time

import pytest

from procs.runtime.config import TraderConfig
from procs.trading.broker import PaperBroker
from procs.trading.engine import Engine
from procs.trading.fills import FillModel
from procs.trading.ledger import Ledger

T0 = 1_730_000_000_000  # market ms (2024-10-27)
GOLDEN = ({"macd": -1.0, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0},
          {"macd": 1.0, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0})
DEAD = ({"macd": 1.0, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0},
        {"macd": -1.0, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0})
FLAT = ({"macd": 1.0, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0},
        {"macd": 1.5, "macd_signal": 0.0, "rsi": 50.0, "bb_lower": 90.0})


class Rig:
    """An engine over a ledger file, rebuilt on demand (a restart)."""

    def __init__(self, path, **cfg):
        self.path = path
        self.cfg = TraderConfig.model_validate({"arm_on_start": True, "slippage_pct": 0.0, **cfg})
        self.ids = itertools.count(1)
        self.t = T0
        self.events: list[tuple] = []
        self.start()

    def start(self) -> Engine:
        self.ledger = Ledger(self.path)
        self.broker = PaperBroker(FillModel(self.cfg.fee_rate, self.cfg.slippage_pct))
        self.engine = Engine(self.cfg, self.ledger, self.broker, wall_ns=time.time_ns,
                             emit=lambda *a: self.events.append(a))
        self.engine.on_universe({"KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"})
        return self.engine

    def restart(self, crash: bool = False) -> Engine:
        if not crash:
            self.engine.flush()
        self.ledger.db.close()   # a crash: no flush, the open transaction is lost
        return self.start()

    def trade(self, market: str, price: float, volume: float = 1e6, dt_ms: int = 1000) -> None:
        self.t += dt_ms
        self.engine.on_trade(market, self.t, price, volume, next(self.ids))

    def close(self, market: str, close: float, pair=GOLDEN) -> None:
        self.engine.on_candle_close(market, self.t // 1000 - 1800, close, dict(pair[0]), dict(pair[1]))

    def enter(self, market: str, price: float) -> None:
        self.trade(market, price)
        self.close(market, price)
        self.trade(market, price)   # fills the market buy

    def rows(self, sql: str, *params):
        return [tuple(r) for r in self.ledger.query(sql, params)]


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path / "ledger.sqlite")
    yield r
    r.ledger.db.close()


@pytest.fixture
def make_rig(tmp_path):
    made = []

    def make(**cfg):
        r = Rig(tmp_path / f"ledger{len(made)}.sqlite", **cfg)
        made.append(r)
        return r
    yield make
    for r in made:
        r.ledger.db.close()
