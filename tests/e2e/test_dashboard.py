"""The gateway's web dashboard in a real browser (Debian's chromium, headless, driven by selenium) over a running
replay: the page loads, the chart canvas is drawn, a candle closed in the replay appears on the page within a
second, and the mode banner follows the engine when it is disarmed."""
import os
import shutil
import time

import pytest
import requests

from procs.trading.client import TraderClient
from shm.tables import CANDLES
from tests.e2e.test_gateway import _url
from tests.helpers import attach, headless_chromium, wait_for

PIXELS = """
const cs = Array.from(document.querySelectorAll('#chart canvas'));
let best = 0;
for (const c of cs) {
  if (!c.width || !c.height) continue;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {   // pixels far from the background colour (#0f1117)
    if (d[i + 3] && Math.abs(d[i] - 15) + Math.abs(d[i + 1] - 17) + Math.abs(d[i + 2] - 23) > 60) n++;
  }
  best = Math.max(best, n);
}
return best;
"""


@pytest.fixture
def browser():
    b = headless_chromium((1400, 900))
    try:
        yield b
    finally:
        b.quit()


def test_the_dashboard_follows_the_replay_and_the_engine(env, browser, tmp_path):
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH", "KRW-XRP"], speed=1800.0,
                      tail="[trader]\narm_on_start = true\n")
    for p in ("exchange", "indicator", "symbols", "trader", "ingest", "gateway"):
        env.start(p)
    try:
        base = _url(env)
        wait_for(lambda: requests.get(f"{base}/api/candles", params={"market": "KRW-BTC", "tf": "30m", "count": 1},
                                      timeout=5).json()["count"] >= 20, 60, "20 candles of KRW-BTC")
        wait_for(lambda: requests.get(f"{base}/api/engine", timeout=5).json().get("mode") == "ARMED", 60,
                 "the engine ARMED")
        browser.get(f"{base}/?market=KRW-BTC&tf=30m")
        assert browser.title == "SMTM-NG dashboard"
        wait_for(lambda: browser.execute_script("return window.smtm && window.smtm.ready && window.smtm.mode"), 20,
                 "the page ready")
        assert browser.execute_script("return window.smtm.historyLoaded") >= 20
        wait_for(lambda: browser.execute_script(PIXELS) > 2000, 10, "the chart drawn")
        assert browser.find_element("id", "mode").text == "ARMED"

        # a candle closes in the replay: on the page within a second
        ring = attach(CANDLES.open, env.instance, "30m", 32, 2048)
        row = ring.row_of("KRW-BTC")
        seen = []
        for _ in range(3):
            n0 = ring.count(row)
            wait_for(lambda: ring.count(row) > n0, 30, "a new KRW-BTC candle")   # noqa: B023 - called at once
            t_new = time.monotonic()
            closed = int(ring.read_last(row, 2)[0]["t"][0])
            wait_for(lambda: closed in browser.execute_script("return window.smtm.closes"), 5,   # noqa: B023
                     "the closed candle on the page")
            seen.append(time.monotonic() - t_new)
        print(f"closed candles on the page {[round(s * 1000) for s in seen]} ms after the ring had them")
        assert max(seen) < 1.0, seen

        # the banner follows the engine
        with TraderClient(env.run_dir / "trader.sock") as c:
            assert c.request("LIVE.DISARM", {"reason": "dashboard test"})["ok"]
        t0 = time.monotonic()
        wait_for(lambda: browser.find_element("id", "mode").text == "DISARMED", 5, "the banner DISARMED")
        assert time.monotonic() - t0 < 2.0
        assert "dashboard test" in browser.find_element("id", "account").text
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("SMTM_SHOT_DIR"):
            shutil.copy(shot, os.environ["SMTM_SHOT_DIR"])

        # the API's own page, rendered from the gateway alone (this browser reaches nothing else)
        browser.get(f"{base}/docs")
        wait_for(lambda: "/api/candles" in browser.find_element("tag name", "body").text, 20, "Swagger UI drawn")
        if os.environ.get("SMTM_SHOT_DIR"):
            browser.save_screenshot(os.path.join(os.environ["SMTM_SHOT_DIR"], "docs.png"))
    finally:
        env.stop_all()
