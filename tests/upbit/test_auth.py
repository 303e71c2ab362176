"""Upbit request authentication: a signed request verifies; a changed query, a reused nonce, a wrong key,
a missing or malformed token each get Upbit's error name."""
from __future__ import annotations

import hashlib

import jwt
import pytest

from procs.upbit.auth import AuthError, NonceLedger, authorization, query_hash, query_string, token, verify

ACCESS, SECRET = "replayAccessKey000000000000000000000000000", "replaySecretKey0000000000000000000000000"  # 40+ chars


def secret_for(key):
    return SECRET if key == ACCESS else None


def test_query_strings_as_sent_and_hashed():
    # POST /v1/orders body fields, in the order sent (PROTOCOL.md §2.7 / §3.1)
    body = {"market": "KRW-BTC", "side": "bid", "volume": "0.01", "price": "100000000", "ord_type": "limit"}
    qs = query_string(body)
    assert qs == "market=KRW-BTC&side=bid&volume=0.01&price=100000000&ord_type=limit"
    assert query_hash(qs) == hashlib.sha512(qs.encode()).hexdigest()
    # list parameters: key[]=a&key[]=b, unescaped
    assert query_string({"states": ["wait", "watch"], "market": "KRW-ETH"}) == \
        "states[]=wait&states[]=watch&market=KRW-ETH"
    assert query_string({"uuids[]": ["a", "b"]}) == "uuids[]=a&uuids[]=b"
    assert query_string(None) == "" and query_string({}) == ""


def test_a_signed_request_verifies_and_carries_upbits_claims():
    qs = "market=KRW-BTC&side=bid&price=5000&ord_type=price&identifier=smtm-x-1"
    header = authorization(ACCESS, SECRET, qs)["Authorization"]
    claims = jwt.decode(header.split()[1], SECRET, algorithms=["HS512"])
    assert jwt.get_unverified_header(header.split()[1])["alg"] == "HS512"
    assert claims["access_key"] == ACCESS and claims["query_hash_alg"] == "SHA512"
    assert claims["query_hash"] == query_hash(qs) and len(claims["nonce"]) == 36
    assert verify(header, qs, secret_for, NonceLedger()) == ACCESS
    assert verify(authorization(ACCESS, SECRET)["Authorization"], "", secret_for, NonceLedger()) == ACCESS


@pytest.mark.parametrize("case, name", [
    ("changed query", "invalid_query_payload"),
    ("reused nonce", "nonce_used"),
    ("wrong secret", "jwt_verification"),
    ("unknown access key", "jwt_verification"),
    ("no header", "no_authorization_token"),
    ("not a jwt", "jwt_verification"),
    ("hash without parameters", "invalid_query_payload"),
])
def test_bad_requests_get_upbits_error_names(case, name):
    qs = "market=KRW-BTC&side=ask&volume=0.5&ord_type=market"
    nonces = NonceLedger()
    header, sent = f"Bearer {token(ACCESS, SECRET, qs)}", qs
    if case == "changed query":
        sent = qs.replace("0.5", "5")
    elif case == "reused nonce":
        fixed = f"Bearer {token(ACCESS, SECRET, qs, nonce='11111111-2222-3333-4444-555555555555')}"
        assert verify(fixed, qs, secret_for, nonces) == ACCESS
        header = fixed
    elif case == "wrong secret":
        header = f"Bearer {token(ACCESS, 'not-the-secret', qs)}"
    elif case == "unknown access key":
        header = f"Bearer {token('someone-else', SECRET, qs)}"
    elif case == "no header":
        header = None
    elif case == "not a jwt":
        header = "Bearer abc.def"
    elif case == "hash without parameters":
        sent = ""
    with pytest.raises(AuthError) as err:
        verify(header, sent, secret_for, nonces)
    assert err.value.name == name and SECRET not in str(err.value)


def test_the_nonce_ledger_is_bounded_and_per_key():
    n = NonceLedger(keep=3)
    assert n.use("a", "1") and not n.use("a", "1") and n.use("b", "1")
    for x in "234":
        n.use("a", x)
    assert n.use("a", "1")          # forgotten: only the newest 3 are kept
