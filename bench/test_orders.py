"""Order round trip against the replay exchange's exchange API: the Upbit broker's client
(:class:`~procs.upbit.exchange.ExchangeClient`: JWT signing, requests, the exchange's verification, validation
and placement, the answer parsed) over loopback HTTP, the exchange served from a thread of this process.

* ``POST /v1/orders`` — a limit buy resting far below the market (placed, funds locked, answered 201);
* ``GET /v1/order`` — one order with its trades (what the broker polls for fills);
* peer: ``GET /replay/status`` unsigned through the same requests session — the HTTP floor, so the
  ratio says what signing, verification and the order book add.

The exchange's rate limits (order 8/s, default 30/s) are lifted for the measurement: with them the figure
would be the limiter's spacing, not the round trip.
"""
from __future__ import annotations

import time
import uuid

import pytest

from bench.conftest import RESULTS
from procs.trading.latency import LatencyProbe
from procs.trading.risk import round_to_tick
from tests.helpers import ExchangeThread

N = 400


@pytest.fixture(scope="module")
def ex():
    e = ExchangeThread(["KRW-BTC"], account_krw=1e10)
    for _ in range(5):
        e.trade()
    e.exchange.private.limits.groups = dict.fromkeys(("default", "order", "order-cancel-all"), (100000, 1.0))
    yield e
    e.close()


def _summary(name: str, xs: list[float]) -> None:
    RESULTS[name] = {**LatencyProbe.summary(xs), "rtt": True, "group": "orders"}


def _client(ex):
    c = ex.client()
    c.limiter.limits = {**c.limiter.limits, "order": 100_000, "default": 100_000}
    return c


def test_order_round_trip(benchmark, ex):
    c = _client(ex)
    price = f"{round_to_tick(ex.exchange.account.last_price['KRW-BTC'] * 0.5, 'bid'):.0f}"
    volume = f"{6000 / float(price):.8f}"
    times: list[float] = []

    def place():
        body = {"market": "KRW-BTC", "side": "bid", "volume": volume, "price": price, "ord_type": "limit",
                "identifier": f"bench-{uuid.uuid4().hex}"}
        t0 = time.perf_counter_ns()
        c.place(body)
        times.append((time.perf_counter_ns() - t0) / 1000)
    benchmark.pedantic(place, rounds=N, iterations=1, warmup_rounds=20)
    _summary("POST /v1/orders round trip (replay exchange)", times[20:])
    c.cancel_open()


def test_order_lookup_round_trip(benchmark, ex):
    c = _client(ex)
    o = next(iter(ex.exchange.account.orders.values()))
    times: list[float] = []

    def look():
        t0 = time.perf_counter_ns()
        c.order(uuid=o.uuid)
        times.append((time.perf_counter_ns() - t0) / 1000)
    benchmark.pedantic(look, rounds=N, iterations=1, warmup_rounds=20)
    _summary("GET /v1/order round trip (replay exchange)", times[20:])


def test_http_floor_peer(benchmark, ex):
    c = _client(ex)
    times: list[float] = []

    def status():
        t0 = time.perf_counter_ns()
        c.session.get(ex.url + "/faults", timeout=5).json()
        times.append((time.perf_counter_ns() - t0) / 1000)
    benchmark.pedantic(status, rounds=N, iterations=1, warmup_rounds=20)
    _summary("GET /faults unsigned (HTTP floor, peer)", times[20:])
