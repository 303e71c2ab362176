"""One REST rate limiter per process: it follows what the exchange announces in Remaining-Req,
backs off on 429 and stops on 418 (against the replay exchange on loopback)."""
import threading

import pytest
import requests

from procs.upbit.rest import RateLimiter, RestBlocked, RestClient
from tests.helpers import get_json, wait_for


@pytest.fixture
def exchange(env):
    # the exchange allows only 5 requests/s per group; the client assumes Upbit's 10
    env.write_overlay(markets=["KRW-BTC"], speed=0.0, exchange="rest_per_second = 5")
    env.start("exchange")
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(base + "/replay/status"), 30, "the exchange")
    return base



def test_burst_never_exceeds_the_announced_limit(exchange):
    limiter = RateLimiter()
    results = []

    def worker():
        client = RestClient(exchange, limiter)  # separate sessions, one limiter: as in a process
        for _ in range(10):
            results.append(client.get("/v1/candles/minutes/30", {"market": "KRW-BTC", "count": 1}))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    st = requests.get(exchange + "/replay/status", timeout=5).json()
    assert st["rest_limit_per_s"] == 5
    # concurrent callers may have a request in flight when `sec` reaches 0: the limiter then waits
    assert st["rest_max_sent_per_s"]["candle"] <= 5 + 3, st["rest_max_sent_per_s"]
    assert st["rest_status_counts"].get("418", 0) == 0


def test_sequential_burst_sends_at_most_the_announced_limit(exchange):
    client = RestClient(exchange, RateLimiter())
    for _ in range(25):
        client.get("/v1/candles/minutes/30", {"market": "KRW-BTC", "count": 1})
    st = requests.get(exchange + "/replay/status", timeout=5).json()
    assert st["rest_max_sent_per_s"]["candle"] <= 5
    assert st["rest_status_counts"].get("429", 0) == 0


def test_429_backs_off_and_retries(exchange):
    requests.post(exchange + "/faults", json={"type": "rest_429", "count": 3}, timeout=5)
    limiter = RateLimiter()
    client = RestClient(exchange, limiter)
    assert client.get("/v1/candles/minutes/30", {"market": "KRW-BTC", "count": 1}) == []
    assert limiter.throttled == 3


def test_418_stops_every_call_for_the_block(exchange):
    requests.post(exchange + "/faults", json={"type": "rest_418", "seconds": 2}, timeout=5)
    limiter = RateLimiter()
    client = RestClient(exchange, limiter)
    with pytest.raises(RestBlocked):
        client.get("/v1/candles/minutes/30", {"market": "KRW-BTC"})
    with pytest.raises(RestBlocked):  # no request goes out during the block
        client.get("/v1/market/all")
    sent = client.requests
    assert sent == 1
    wait_for(lambda: limiter.clock() > limiter.blocked_until, 10, "the block to end")
    assert len(client.get("/v1/market/all")) == 431
