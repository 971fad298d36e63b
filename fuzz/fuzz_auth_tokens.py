"""Fuzz the credentials and JWT verification of the auth layer (``spooky_trio.auth``).

Input: a mode byte, then either a raw ``Authorization`` / API-key header value, or a JWT
built from fuzzed header and payload JSON texts, signed with the test secret (so the
claim rules run) or left with a fuzzed signature.

Invariants: ``bearer_token`` and ``ApiKeyCheck.refusal`` never raise; a token is ASCII,
non-empty and trimmed. A token checked again (its signature then remembered) gets the same
verdict as the first time and as a verifier that remembers nothing. ``JwtVerifier.parse`` / ``verify`` raise nothing but
``TokenRefused``. A token is accepted only when its ``alg`` is allowed, its signature is the
HMAC of ``header.payload`` with the secret (HS256) or verifies with the JWKS key (ES256),
its payload is a JSON object whose ``exp`` is an integer >= 0 with ``now <= exp + skew``,
and integer ``nbf``/``iat`` are not in the future beyond the skew. ``forwarded_claims`` of
an accepted payload never yields a value with a control character other than tab.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from spooky_trio.auth.claims import forwarded_claims
    from spooky_trio.auth.credentials import ApiKeyCheck, bearer_token
    from spooky_trio.auth.jwks import JwksCache, JwksSettings, parse_jwks
    from spooky_trio.auth.tokens import JwtVerifier, TokenRefused
    from spooky_trio.config.schema_auth import JwtAuthConfig, Secret

logging.getLogger("spooky.auth").disabled = True  # a dropped claim is logged: expected here

SECRET = "fuzz-secret"
NOW = 1_700_000_000
SKEW = 30
_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
_JWK = {**ECAlgorithm.to_jwk(_KEY.public_key(), as_dict=True), "kid": "k1"}
_CACHE = JwksCache(JwksSettings("https://idp/jwks", None, "", 300, 30, 1))
_CACHE.install(parse_jwks(json.dumps({"keys": [_JWK]}).encode()), 0.0)
VERIFIER = JwtVerifier(JwtAuthConfig(secret=Secret(SECRET), jwks_uri="https://idp/jwks", algorithms=["HS256", "ES256"],
                                     clock_skew_secs=SKEW, issuer="iss", audience="aud"), _CACHE, clock=lambda: NOW)
API_KEYS = ApiKeyCheck("x-api-key", ["k1", " key-two "])
HEADERS = [b'{"alg":"HS256"}', b'{"alg":"ES256","kid":"k1"}', b'{"alg":"none"}', b'{"alg":"HS256","crit":["x"]}',
           b'{"alg":"ES256"}', b'{"alg":"RS256","kid":"k1"}', b"[]", b'{"alg":"HS256","kid":5}']
PAYLOADS = [b'{"exp":1700000060,"iss":"iss","aud":"aud"}', b'{"exp":1700000060,"iss":"iss","aud":["x","aud"],"nbf":1700000030}',
            b'{"exp":"1700000060","iss":"iss","aud":"aud"}', b'{"exp":1699999969,"iss":"iss","aud":"aud"}',
            b'{"exp":1700000060,"iss":"iss","aud":"aud","sub":"a\\r\\nb","n":[1,"x"],"t":true}', b"[1]", b"{}"]


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


#: the same settings without the memory of verified signatures: every check in full
FRESH = JwtVerifier(JwtAuthConfig(secret=Secret(SECRET), jwks_uri="https://idp/jwks", algorithms=["HS256", "ES256"],
                                  clock_skew_secs=SKEW, issuer="iss", audience="aud"), _CACHE, clock=lambda: NOW)
FRESH.verified.capacity = 0


def _verdict(verifier: JwtVerifier, token: str) -> dict | str:  # type: ignore[type-arg]
    try:
        parsed = verifier.parse(token)
        return dict(verifier.verify(parsed, verifier.keys_for(parsed)))
    except TokenRefused as exc:
        return exc.reason


def _accepted(token: str) -> dict | None:  # type: ignore[type-arg]
    """VERIFIER's verdict, checked twice (the second may come from its memory of verified
    signatures) and against FRESH's: a remembered token answers as a full check does."""
    first = _verdict(VERIFIER, token)
    assert _verdict(VERIFIER, token) == first == _verdict(FRESH, token), token
    return first if isinstance(first, dict) else None


def _check_acceptance(token: str, claims: dict) -> None:  # type: ignore[type-arg]
    head, payload, signature = token.split(".")
    header = json.loads(_b64decode(head))
    signing_input = f"{head}.{payload}".encode()
    if header["alg"] == "HS256":
        assert hmac.compare_digest(_b64decode(signature), hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    else:
        assert header["alg"] == "ES256"
        assert ECAlgorithm(ECAlgorithm.SHA256).verify(signing_input, _KEY.public_key(), _b64decode(signature))
    assert claims == json.loads(_b64decode(payload))
    exp = claims["exp"]
    assert isinstance(exp, int) and not isinstance(exp, bool) and exp >= 0 and NOW <= exp + SKEW
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            assert value <= NOW + SKEW
    assert claims.get("iss") == "iss"
    assert claims.get("aud") == "aud" or (isinstance(claims.get("aud"), list) and "aud" in claims["aud"])
    mapping = [(name, f"x-{name}".encode()) for name in claims if isinstance(name, str) and name.isidentifier()]
    for _name, value in forwarded_claims(claims, mapping, "fuzz"):
        assert not any(c < 0x20 and c != 0x09 or c == 0x7F for c in value), value


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    mode = r.int_in_range(0, 2)
    if mode == 0:  # a raw header value
        value = r.rest()
        token, why = bearer_token([(b"authorization", value)])
        if token is not None:
            assert token and token.isascii() and token.encode() == token.encode().strip() and why == ""
            claims = _accepted(token)
            if claims is not None:
                _check_acceptance(token, claims)
        else:
            assert why in ("auth_missing", "auth_malformed")
        assert API_KEYS.refusal([(b"x-api-key", value)]) in (None, "auth_missing", "auth_invalid_key")
        return
    header = r.pick(HEADERS) if r.boolean() else r.bytes_(60)
    payload = r.pick(PAYLOADS) if r.boolean() else r.bytes_(200)
    signing_input = b64(header) + b"." + b64(payload)
    if mode == 1:  # signed with the secret: the claim rules decide
        signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    else:
        signature = r.bytes_(90)
    try:
        token = (signing_input + b"." + signature).decode("ascii")
    except UnicodeDecodeError:
        return
    claims = _accepted(token)
    if claims is not None:
        _check_acceptance(token, claims)


if __name__ == "__main__":
    run(test_one_input)
