"""The symbol manager: the safety filter on the recorded market/all response, top-N hysteresis,
and the 24 h ranking on real data against an independent pandas computation."""
import numpy as np
import pandas as pd
import requests

from procs.replay_data import ReplayTape, load_market_all
from procs.symbols import TopN, safety_flags
from shm.symbols import CAUTION, TRADABLE, WARNING, SymbolsTable
from tests.conftest import ALL_MARKETS, ROOT, attach, get_json, wait_for


def test_safety_filter_excludes_exactly_the_flagged_krw_markets():
    doc = load_market_all(ROOT / "data" / "upbit")
    flags = safety_flags(doc)
    krw = [m for m in doc if m["market"].startswith("KRW-")]
    assert len(flags) == len(krw) == 155
    for m in krw:
        ev = m["market_event"]
        flagged = ev["warning"] or any(ev["caution"].values())
        assert (flags[m["market"]] != 0) == flagged, m["market"]
        assert bool(flags[m["market"]] & WARNING) == ev["warning"]
        assert bool(flags[m["market"]] & CAUTION) == any(ev["caution"].values())
    assert "KRW-ETC" in flags and flags["KRW-ETC"] & CAUTION  # TRADING_VOLUME_SOARING in the recording
    assert not any(c.startswith(("BTC-", "USDT-")) for c in flags)


def test_topn_hysteresis_does_not_flap():
    top = TopN(2, min_stable_s=100)
    assert top.update(["A", "B", "C"], 0) == ["A", "B"]          # start-up: the top 2 at once
    # C and B swap around the cut every 30 s: nothing changes while neither is stable
    for t, ranked in ((30, ["A", "C", "B"]), (60, ["A", "B", "C"]), (90, ["A", "C", "B"]), (120, ["A", "B", "C"])):
        assert top.update(ranked, t) == ["A", "B"], t
    # C stays inside for 100 s: B leaves after 100 s outside, C joins once there is room
    for t in (150, 200, 249):
        assert top.update(["A", "C", "B"], t) == ["A", "B"]
    assert top.update(["A", "C", "B"], 250) == ["A", "C"]     # both stable for 100 s: B out, C in
    assert top.update(["D", "A", "C"], 252) == ["A", "C"]     # D must prove itself too


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
        return list(rows) if ranked and all(float(r["value_24h"]) == tick[bytes(r["code"]).decode()]["acc_trade_price_24h"]
                                      for r in ranked) else None
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
