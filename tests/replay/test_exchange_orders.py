"""The replay exchange's exchange (private) API over real HTTP, as Upbit serves it: signed requests (a changed
query, a reused nonce, a wrong key, a view-only key each get Upbit's error), accounts, orders and their
validation (tick grid, 5,000 KRW minimum, funds, an identifier burnt forever), matching on the replayed trades
with the paper fill model, cancels, the batch cancel, and the order group's rate limit."""
from __future__ import annotations

import uuid

import pytest
import requests

from procs.upbit.auth import authorization, query_string
from procs.upbit.exchange import ExchangeRejected
from tests.helpers import REPLAY_KEYS, ExchangeThread


@pytest.fixture(scope="module")
def ex():
    e = ExchangeThread(["KRW-BTC", "KRW-ETH"])
    for _ in range(4):
        e.trade()
    yield e
    e.close()


def _ident() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _raw(ex, method, path, params, access=None, secret=None, qs_signed=None, nonce_header=None):
    access, secret = access or ex.access, secret or ex.secret
    qs = query_string(params)
    headers = nonce_header or authorization(access, secret, qs if qs_signed is None else qs_signed)
    if method == "POST":
        return requests.post(ex.url + path, json=params, headers=headers, timeout=5)
    return requests.request(method, ex.url + path + (f"?{qs}" if qs else ""), headers=headers, timeout=5)


def test_signed_requests_and_upbits_errors(ex):
    ok = _raw(ex, "GET", "/v1/orders/chance", {"market": "KRW-BTC"})
    assert ok.status_code == 200 and ok.json()["bid_fee"] == "0.0005"
    assert ok.headers["Remaining-Req"].startswith("group=default; min=")
    # the token signed another query: invalid_query_payload
    bad = _raw(ex, "GET", "/v1/orders/chance", {"market": "KRW-BTC"}, qs_signed="market=KRW-ETH")
    assert (bad.status_code, bad.json()["error"]["name"]) == (401, "invalid_query_payload")
    # a nonce used twice: nonce_used
    header = authorization(ex.access, ex.secret, "market=KRW-ETH")
    assert _raw(ex, "GET", "/v1/orders/chance", {"market": "KRW-ETH"}, nonce_header=header).status_code == 200
    again = _raw(ex, "GET", "/v1/orders/chance", {"market": "KRW-ETH"}, nonce_header=header)
    assert again.json()["error"]["name"] == "nonce_used"
    # the wrong secret, and an access key the exchange does not know: jwt_verification
    wrong = _raw(ex, "GET", "/v1/accounts", None, secret="not-the-secret-key-000000000000000000000")
    assert (wrong.status_code, wrong.json()["error"]["name"]) == (401, "jwt_verification")
    assert _raw(ex, "GET", "/v1/accounts", None, access="nobody-0000000").json()["error"]["name"] == "jwt_verification"
    assert requests.get(ex.url + "/v1/accounts", timeout=5).json()["error"]["name"] == "no_authorization_token"
    # a view-only key may look, not trade: out_of_scope
    view_access, (view_secret, _) = list(REPLAY_KEYS.items())[1]
    assert _raw(ex, "GET", "/v1/accounts", None, view_access, view_secret).status_code == 200
    body = {"market": "KRW-BTC", "side": "bid", "price": "10000", "ord_type": "price", "identifier": _ident()}
    refused = _raw(ex, "POST", "/v1/orders", body, view_access, view_secret)
    assert (refused.status_code, refused.json()["error"]["name"]) == (403, "out_of_scope")


def test_validation_names_and_identifiers_burnt_forever(ex):
    c = ex.client()
    last = ex.exchange.account.last_price["KRW-BTC"]
    cases = [({"side": "bid", "ord_type": "limit", "price": "100000001", "volume": "0.001"}, "invalid_price_bid"),
             ({"side": "ask", "ord_type": "limit", "price": "100000500", "volume": "0.001"}, "invalid_price_ask"),
             ({"side": "bid", "ord_type": "price", "price": "4999"}, "under_min_total_bid"),
             ({"side": "bid", "ord_type": "price", "price": "20000000"}, "insufficient_funds_bid"),
             ({"side": "ask", "ord_type": "market", "volume": "1"}, "insufficient_funds_ask"),
             ({"side": "ask", "ord_type": "market", "volume": str(4000 / last)}, "under_min_total_ask"),
             ({"side": "bid", "ord_type": "price", "price": "10000", "volume": "1"}, "validation_error"),
             ({"side": "bid", "ord_type": "best", "price": "10000"}, "validation_error"),
             ({"side": "bid", "ord_type": "limit", "price": "-5", "volume": "1"}, "validation_error")]
    for body, name in cases:
        ident = _ident()
        with pytest.raises(ExchangeRejected) as e:
            c.place({"market": "KRW-BTC", **body, "identifier": ident})
        assert e.value.name == name, body
        # the identifier of a failed order can never be used again, even for a valid order
        with pytest.raises(ExchangeRejected, match="used before"):
            c.place({"market": "KRW-BTC", "side": "bid", "ord_type": "price", "price": "10000", "identifier": ident})
        assert c.order(identifier=ident) is None


def test_orders_fill_on_later_trades_with_the_paper_fill_model(ex):
    c = ex.client()
    krw0 = _krw(c)
    buy = c.place({"market": "KRW-ETH", "side": "bid", "ord_type": "price", "price": "100000", "identifier": _ident()})
    assert buy["state"] == "wait" and buy["locked"] == "100050"      # the fee reserved with the total
    while c.order(uuid=buy["uuid"])["state"] == "wait":
        ex.trade()
    done = c.order(uuid=buy["uuid"])
    [t] = done["trades"]
    trade = ex.tape.trades[ex.i - 1]
    assert float(t["price"]) == trade["price"] * (1 + 0.05 / 100)    # the paper model's slippage
    assert float(t["volume"]) == pytest.approx(100000 / float(t["price"]))
    assert done["state"] == "done" and float(done["paid_fee"]) == pytest.approx(50.0)
    assert _krw(c) == pytest.approx(krw0 - 100050)
    eth = float(next(a for a in c.accounts() if a["currency"] == "ETH")["balance"])
    assert eth == pytest.approx(float(t["volume"]))
    # a limit sell far above the market rests, locks the coins, and is cancelled (funds released)
    from procs.trading.risk import round_to_tick
    ask = c.place({"market": "KRW-ETH", "side": "ask", "ord_type": "limit", "volume": t["volume"],
                   "price": f"{round_to_tick(float(t['price']) * 1.5, 'ask'):.0f}", "identifier": _ident()})
    for _ in range(3):
        ex.trade()
    assert c.order(uuid=ask["uuid"])["state"] == "wait"
    assert [o["uuid"] for o in c.open_orders()] == [ask["uuid"]]
    assert float(next(a for a in c.accounts() if a["currency"] == "ETH")["locked"]) == float(t["volume"])
    c.cancel(uuid=ask["uuid"])
    assert c.order(uuid=ask["uuid"])["state"] == "cancel" and not c.open_orders()
    assert float(next(a for a in c.accounts() if a["currency"] == "ETH")["balance"]) == float(t["volume"])
    closed = c.closed_orders()
    assert {buy["uuid"], ask["uuid"]} <= {o["uuid"] for o in closed}
    c.place({"market": "KRW-ETH", "side": "ask", "ord_type": "market", "volume": t["volume"], "identifier": _ident()})
    while c.open_orders():
        ex.trade()


def test_ioc_fok_post_only_and_the_batch_cancel(ex):
    c = ex.client()
    last = ex.exchange.account.last_price["KRW-BTC"]
    from procs.trading.risk import round_to_tick
    far = f"{round_to_tick(last * 0.5, 'bid'):.0f}"
    ioc = c.place({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": far, "volume": "0.001",
                   "time_in_force": "ioc", "identifier": _ident()})
    fok = c.place({"market": "KRW-BTC", "side": "bid", "ord_type": "best", "price": "10000", "time_in_force": "fok",
                   "identifier": _ident()})
    post = c.place({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "volume": "0.001",
                    "price": f"{round_to_tick(last * 1.01, 'ask'):.0f}", "time_in_force": "post_only",
                    "identifier": _ident()})
    assert post["state"] == "cancel"          # it would have taken liquidity
    rest = [c.place({"market": m, "side": "bid", "ord_type": "limit", "volume": "0.001" if m == "KRW-BTC" else "0.01",
                     "price": f"{round_to_tick(ex.exchange.account.last_price[m] * 0.5, 'bid'):.0f}",
                     "identifier": _ident()})
            for m in ("KRW-BTC", "KRW-ETH", "KRW-BTC")]
    while ex.exchange.account.open.get("KRW-BTC") and any(o.uuid in (ioc["uuid"], fok["uuid"])
                                                          for o in ex.exchange.account.open["KRW-BTC"]):
        ex.trade()
    assert c.order(uuid=ioc["uuid"])["state"] == "cancel"               # the next trade did not reach it: cancelled
    f = c.order(uuid=fok["uuid"])
    assert f["state"] == "done" and len(f["trades"]) == 1                 # filled whole by one trade
    out = c.cancel_open()
    assert out["success"]["count"] == 3 and not c.open_orders()
    assert all(c.order(uuid=r["uuid"])["state"] == "cancel" for r in rest)


def test_the_order_group_rate_limit(ex):
    c = ex.client()
    c.limiter.limits = {**c.limiter.limits, "order": 100}    # this client does not hold itself back
    answers = []
    for _ in range(12):
        r = _raw(ex, "POST", "/v1/orders", {"market": "KRW-BTC", "side": "bid", "ord_type": "price", "price": "1",
                                            "identifier": _ident()})
        answers.append((r.status_code, r.headers.get("Remaining-Req", "")))
    statuses = [s for s, _ in answers]
    assert 429 in statuses and statuses.count(400) <= 8                  # at most 8 a second reach the exchange
    assert all(rem.startswith("group=order;") for s, rem in answers if s != 429)


def _krw(c) -> float:
    a = next(a for a in c.accounts() if a["currency"] == "KRW")
    return float(a["balance"]) + float(a["locked"])
