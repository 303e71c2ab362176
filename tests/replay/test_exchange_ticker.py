"""The replay exchange's REST ticker equals an independent pandas computation over the trades
replayed so far (trailing 24 h of replay time), for every bundled market."""
import numpy as np
import pandas as pd
import pytest
import requests

from procs.market.tape import ReplayTape
from tests.helpers import ALL_MARKETS, ROOT, get_json, wait_for


def test_ticker_24h_values_equal_pandas(env):
    env.write_overlay(speed=0.0, exchange='start = "2024-11-01"\nend = "2024-11-06"')
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    assert requests.get(base + "/v1/ticker", params={"markets": "KRW-BTC"}, timeout=5).json() == []  # nothing yet
    # a subscriber starts the replay; pause it part-way and read the tickers there
    import json

    import websocket
    ws = websocket.create_connection(f"ws://127.0.0.1:{env.port}/websocket/v1", timeout=10)
    ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}]))
    wait_for(lambda: get_json(base + "/replay/status")["percent"] > 50, 60, "half the replay", interval=0.01)
    requests.post(base + "/replay/control", json={"pause": True}, timeout=5)
    ws.close()
    got = requests.get(base + "/v1/ticker", params={"markets": ",".join(ALL_MARKETS)}, timeout=5)
    assert got.headers["Remaining-Req"].startswith("group=ticker;")
    tick = {t["market"]: t for t in got.json()}
    now = max(t["trade_timestamp"] for t in tick.values())

    tape = ReplayTape.build(ROOT / "data" / "upbit", ALL_MARKETS, 6, 1730419200, 1730851200)
    df = pd.DataFrame({"market": np.array(tape.markets)[tape.trades["market"]], "ts": tape.trades["ts"],
                       "value": tape.trades["price"] * tape.trades["volume"], "volume": tape.trades["volume"],
                       "price": tape.trades["price"]})
    df = df[df.ts <= now]
    for m in ALL_MARKETS:
        d = df[df.market == m]
        win = d[d.ts > now - 86_400_000]
        t = tick[m]
        assert t["trade_price"] == d.price.iloc[-1]
        assert t["acc_trade_price_24h"] == pytest.approx(win.value.sum(), rel=1e-9)
        assert t["acc_trade_volume_24h"] == pytest.approx(win.volume.sum(), rel=1e-9)
        day = d[d.ts >= now // 86_400_000 * 86_400_000]
        assert t["acc_trade_price"] == pytest.approx(day.value.sum(), rel=1e-9)
    ranked = sorted(tick, key=lambda m: -tick[m]["acc_trade_price_24h"])
    assert ranked[:3] == list(df[df.ts > now - 86_400_000].groupby("market").value.sum()
                              .sort_values(ascending=False).index[:3])
    assert requests.get(base + "/v1/ticker", params={"markets": "KRW-NOPE"}, timeout=5).status_code == 404
