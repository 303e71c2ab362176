"""Upbit's request authentication (JWT), both sides: signing a request (the Upbit broker) and verifying
one (the replay exchange's private API). Facts: ``../shared/upbit/PROTOCOL.md`` §3.1.

* The token is a JWT signed with HMAC-SHA512 (``HS512``, as Upbit's current examples sign) using the
  **secret key as a raw string**. Claims: ``access_key``; ``nonce`` — a fresh uuid4 per request, never
  accepted twice; and, only when the request has parameters, ``query_hash`` = lowercase hex SHA-512 of
  the exact query string sent, with ``query_hash_alg = "SHA512"``.
* The query string is what is sent: ``unquote(urlencode(params, doseq=True))`` for GET / DELETE, with
  list parameters as ``key[]=a&key[]=b``; for a POST with a JSON body, ``k1=v1&k2=v2`` built from the
  body's fields in the order sent (:func:`query_string` builds both).
* Verification failures carry Upbit's error names (:class:`AuthError`): ``no_authorization_token``,
  ``jwt_verification`` (bad signature, malformed token, unknown ``access_key``), ``nonce_used``,
  ``invalid_query_payload`` (a ``query_hash`` that does not match the query, or a missing one).

Keys never appear in messages, logs or ``repr`` here.
"""
from __future__ import annotations

import hashlib
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import unquote, urlencode

import jwt
import jwt.warnings

ALGORITHM = "HS512"

# Upbit issues 40-character secret keys and signs with HS512: PyJWT's advice (64 bytes for SHA-512)
# cannot be followed by a client, so its warning would only repeat on every request.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


class AuthError(Exception):
    """A request the exchange refuses; ``name`` is Upbit's error name, ``status`` the HTTP status."""

    def __init__(self, name: str, message: str, status: int = 401):
        super().__init__(f"{name}: {message}")
        self.name, self.message, self.status = name, message, status


def query_string(params: Mapping[str, object] | Iterable[tuple[str, object]] | None) -> str:
    """The query string exactly as sent and hashed: ``k=v`` pairs joined by ``&`` in the given order,
    unescaped; a list value becomes ``k[]=a&k[]=b``. ``None`` or empty → ``""``."""
    if not params:
        return ""
    pairs = params.items() if isinstance(params, Mapping) else params
    flat: list[tuple[str, object]] = []
    for k, v in pairs:
        if isinstance(v, (list, tuple)):
            key = k if k.endswith("[]") else f"{k}[]"
            flat.extend((key, x) for x in v)
        else:
            flat.append((k, v))
    return unquote(urlencode(flat, doseq=True))


def query_hash(qs: str) -> str:
    """Lowercase hex SHA-512 of the query string's UTF-8 bytes."""
    return hashlib.sha512(qs.encode("utf-8")).hexdigest()


def token(access_key: str, secret_key: str, qs: str = "", *, nonce: str | None = None) -> str:
    """A signed JWT for one request with query string ``qs`` ("" for a request without parameters)."""
    claims: dict[str, str] = {"access_key": access_key, "nonce": nonce or str(uuid.uuid4())}
    if qs:
        claims["query_hash"] = query_hash(qs)
        claims["query_hash_alg"] = "SHA512"
    return jwt.encode(claims, secret_key, algorithm=ALGORITHM)


def authorization(access_key: str, secret_key: str, qs: str = "") -> dict[str, str]:
    """The ``Authorization`` header of one request."""
    return {"Authorization": f"Bearer {token(access_key, secret_key, qs)}"}


class NonceLedger:
    """The nonces seen, per access key, so that none is accepted twice. Bounded: the oldest ``keep`` are
    remembered (a replay of an older one would also need a valid signature over its exact query)."""

    def __init__(self, keep: int = 1_000_000):
        self.keep = keep
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def use(self, access_key: str, nonce: str) -> bool:
        """True the first time ``nonce`` is seen for ``access_key``, False after."""
        k = (access_key, nonce)
        if k in self._seen:
            return False
        self._seen[k] = None
        if len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        return True


def verify(header: str | None, qs: str, secret_for: Callable[[str], str | None], nonces: NonceLedger) -> str:
    """Check an ``Authorization`` header for a request with query string ``qs``; returns the access key.

    ``secret_for(access_key)`` gives the key's secret, or None for an unknown key. Raises
    :class:`AuthError` with Upbit's error name."""
    if not header or not header.startswith("Bearer "):
        raise AuthError("no_authorization_token", "Authorization: Bearer <JWT> is missing")
    raw = header[len("Bearer "):].strip()
    try:
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError("jwt_verification", "the token is not a JWT") from None
    access = unverified.get("access_key")
    secret = secret_for(access) if isinstance(access, str) else None
    if secret is None:
        raise AuthError("jwt_verification", "unknown access_key")
    try:
        claims = jwt.decode(raw, secret, algorithms=[ALGORITHM, "HS256"])
    except jwt.PyJWTError:
        raise AuthError("jwt_verification", "the signature does not verify") from None
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise AuthError("jwt_verification", "the nonce claim is missing")
    got = claims.get("query_hash")
    if qs:
        if claims.get("query_hash_alg", "SHA512") != "SHA512" or got != query_hash(qs):
            raise AuthError("invalid_query_payload", "query_hash does not match the query sent")
    elif got is not None:
        raise AuthError("invalid_query_payload", "query_hash given for a request without parameters")
    if not nonces.use(access, nonce):
        raise AuthError("nonce_used", "this nonce was used before")
    return access
