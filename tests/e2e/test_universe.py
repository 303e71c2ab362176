"""A universe change reaches ingest's subscription: exactly one new, complete subscription
message, and the new market's trades reach its ring within 1 s."""
import subprocess
import sys
import time

from shm.tables import CANDLES
from tests.helpers import ROOT, attach, get_json, wait_for


def smtm(env, *args):
    return subprocess.run([sys.executable, "-m", "procs.cli", *args], cwd=ROOT, env=env.env,
                          capture_output=True, text=True, timeout=30)


def test_universe_change_resubscribes_once_and_fills_the_new_ring(env):
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"], speed=20_000.0)
    out = smtm(env, "universe", "set", "KRW-BTC,KRW-ETH")
    assert out.returncode == 0 and "KRW-BTC, KRW-ETH" in out.stdout, out.stderr
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    env.start("ingest")
    ring = wait_for(lambda: attach(CANDLES.open, env.instance, "30m", 32, 2048), 30, "candles.30m")
    wait_for(lambda: ring.row_of("KRW-BTC") is not None and ring.count(ring.row_of("KRW-BTC")) > 3, 30, "BTC candles")
    st = get_json(base + "/replay/status")
    n0 = st["subscriptions_received"]
    assert st["subscriptions"][-1]["types"]["trade"] == ["KRW-BTC", "KRW-ETH"]
    assert ring.row_of("KRW-XRP") is None

    t0 = time.monotonic()
    out = smtm(env, "universe", "set", "KRW-BTC,KRW-ETH,KRW-XRP")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: ring.row_of("KRW-XRP") is not None and ring.count(ring.row_of("KRW-XRP")) > 0, 5,
             "KRW-XRP candles")
    latency = time.monotonic() - t0
    print(f"\nuniverse change -> first KRW-XRP candle in its ring: {latency * 1000:.0f} ms")
    assert latency < 1.0
    time.sleep(1.5)  # nothing else may follow
    st = get_json(base + "/replay/status")
    assert st["subscriptions_received"] == n0 + 1
    assert st["subscriptions"][-1]["types"]["trade"] == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
    # a market dropped from the universe keeps its ring readable
    assert smtm(env, "universe", "set", "KRW-XRP").returncode == 0
    wait_for(lambda: get_json(base + "/replay/status")["subscriptions"][-1]["types"]["trade"] == ["KRW-XRP"], 5,
             "the reduced subscription")
    assert ring.count(ring.row_of("KRW-BTC")) > 3
    shown = smtm(env, "universe", "show")
    assert "KRW-XRP" in shown.stdout and "KRW-BTC" not in shown.stdout


def test_a_universe_larger_than_the_tables_is_refused_cleanly(env):
    env.write_overlay(markets=["KRW-BTC"], rows=4)
    env.overlay.write_text(env.overlay.read_text() + "[symbols]\ntop_n = 2\n")
    out = smtm(env, "universe", "set", ",".join(f"KRW-C{i}" for i in range(6)))
    assert out.returncode == 2 and "do not fit" in out.stderr and "Traceback" not in out.stderr
