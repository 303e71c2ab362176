"""The symbol manager on real data: the 24 h ranking and top N it writes equal an independent pandas
computation at a paused replay time."""
import numpy as np
import pandas as pd
import requests

from procs.market.tape import ReplayTape, load_market_all
from procs.market.universe import safety_flags
from shm.symbols import CAUTION, TRADABLE, WARNING, SymbolsTable
from tests.helpers import ALL_MARKETS, ROOT, attach, get_json, wait_for


def test_ranking_on_real_data_equals_pandas(env):
    env.write_overlay(markets=ALL_MARKETS, speed=20_000.0, exchange='start = "2024-11-01"\nend = "2024-11-10"',
                      extra="")
    env.overlay.write_text(env.overlay.read_text() + """
[symbols]
top_n = 5
min_stable_s = 0.0
rank_interval_s = 0.0
safety_interval_s = 1e7
poll_s = 0.2
""")
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    env.start("ingest")
    env.start("symbols")
    wait_for(lambda: get_json(base + "/replay/status")["percent"] > 40, 60, "part of the replay", interval=0.05)
    requests.post(base + "/replay/control", json={"pause": True}, timeout=5)
    table = wait_for(lambda: attach(SymbolsTable.open, env.instance, 32), 30, "the symbols table")
    tick = {t["market"]: t for t in requests.get(base + "/v1/ticker", params={"markets": ",".join(ALL_MARKETS)},
                                                  timeout=5).json()}
    now = max(t["trade_timestamp"] for t in tick.values())

    def settled():
        rows, _ = table.read()
        ranked = [r for r in rows if int(r["rank"]) > 0]
        same = all(float(r["value_24h"]) == tick[bytes(r["code"]).decode()]["acc_trade_price_24h"] for r in ranked)
        return list(rows) if ranked and same else None
    rows = wait_for(settled, 30, "a ranking at the paused replay time")
    tape = ReplayTape.build(ROOT / "data" / "upbit", ALL_MARKETS, 6, 1730419200, 1731196800)
    df = pd.DataFrame({"market": np.array(tape.markets)[tape.trades["market"]], "ts": tape.trades["ts"],
                       "value": tape.trades["price"] * tape.trades["volume"]})
    win = df[(df.ts <= now) & (df.ts > now - 86_400_000)]
    expected = win.groupby("market").value.sum()
    safe = {c for c, f in safety_flags(load_market_all(ROOT / "data" / "upbit")).items() if f == 0}
    expected = expected[[m for m in expected.index if m in safe]].sort_values(ascending=False)
    ranked = sorted((r for r in rows if int(r["rank"]) > 0), key=lambda r: int(r["rank"]))
    assert [bytes(r["code"]).decode() for r in ranked] == list(expected.index)
    for r in ranked:
        assert float(r["value_24h"]) == np.float64(expected[bytes(r["code"]).decode()]) or \
            abs(float(r["value_24h"]) / expected[bytes(r["code"]).decode()] - 1) < 1e-9
    top = [bytes(r["code"]).decode() for r in ranked if r["flags"] & TRADABLE]
    assert top == list(expected.index[:5])
    unsafe = {bytes(r["code"]).decode() for r in rows if r["flags"] & (WARNING | CAUTION)}
    assert unsafe == set(ALL_MARKETS) - safe and not (unsafe & set(top))
