"""JWT verification without sockets (auth/tokens.py, auth/claims.py, auth/credentials.py):
Spooky's exact HS256 rules, the JWKS algorithms, alg none and algorithm confusion, claims,
scopes and roles, forward_claims rendering."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt
import pytest
import trio

from spooky_trio.auth.claims import claim_header_value, forwarded_claims, rbac_refusal
from spooky_trio.auth.credentials import ApiKeyCheck, bearer_token
from spooky_trio.auth.jwks import JwksCache, JwksSettings, parse_jwks
from spooky_trio.auth import tokens
from spooky_trio.auth.tokens import JwtVerifier, TokenRefused
from spooky_trio.config.schema_auth import JwtAuthConfig, Secret
from tests.support.tokens import b64, claims, hs256, jwks, private_key, public_jwk, raw_token, signed, unsigned

NOW = 1_700_000_000
SECRET = "s3cret"


def verifier(**kwargs: Any) -> JwtVerifier:
    if "secret" in kwargs:
        kwargs["secret"] = Secret(kwargs["secret"])
    return JwtVerifier(JwtAuthConfig(**kwargs), kwargs.pop("_jwks", None), clock=lambda: NOW)


def check(v: JwtVerifier, token: str) -> str:
    """``ok`` or the refusal reason."""
    try:
        parsed = v.parse(token)
        v.verify(parsed, v.keys_for(parsed))
    except TokenRefused as exc:
        return exc.reason
    return "ok"


def at(**extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": "alice", "exp": NOW + 60}
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


def test_api_key_first_header_trimmed_against_every_key() -> None:
    check_key = ApiKeyCheck("X-Api-Key", [" k1 ", "k2"])
    assert check_key.refusal([(b"x-api-key", b"  k2\t")]) is None
    assert check_key.refusal([(b"x-api-key", b"k1")]) is None
    assert check_key.refusal([]) == "auth_missing"
    assert check_key.refusal([(b"x-api-key", b"   ")]) == "auth_missing"
    assert check_key.refusal([(b"x-api-key", b"k3")]) == "auth_invalid_key"
    assert check_key.refusal([(b"x-api-key", b"k1x")]) == "auth_invalid_key"
    # only the first header counts
    assert check_key.refusal([(b"x-api-key", b"bad"), (b"x-api-key", b"k1")]) == "auth_invalid_key"


def test_bearer_token_is_read_from_the_first_authorization_header() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc")]) == ("abc", "")
    assert bearer_token([(b"authorization", b"bEaReR   abc  ")]) == ("abc", "")
    assert bearer_token([]) == (None, "auth_missing")
    assert bearer_token([(b"authorization", b"Basic abc")]) == (None, "auth_malformed")
    assert bearer_token([(b"authorization", b"Bearer")]) == (None, "auth_malformed")
    assert bearer_token([(b"authorization", b"Bearer   ")]) == (None, "auth_malformed")
    assert bearer_token([(b"authorization", b"Basic x"), (b"authorization", b"Bearer abc")]) == (None, "auth_malformed")


def test_hs256_exact_rules() -> None:
    v = verifier(secret=" s3cret ")  # the key is the trimmed secret
    assert check(v, hs256(SECRET, at())) == "ok"
    assert check(v, hs256("other", at())) == "auth_invalid_signature"
    assert check(v, hs256(SECRET, at(), alg="HS384")) == "auth_algorithm"  # alg exactly HS256 (Spooky)
    assert check(v, hs256(SECRET, at(), alg="HS512")) == "auth_algorithm"
    assert check(v, unsigned(at())) == "auth_algorithm"  # alg none
    assert check(v, unsigned(at(), alg="HS256")) == "auth_invalid_signature"  # claims HS256, no signature
    assert check(v, "a.b") == "auth_malformed"
    assert check(v, "a.b.c.d") == "auth_malformed"
    token = hs256(SECRET, at())
    head, payload, sig = token.split(".")
    assert check(v, f"{head}=.{payload}.{sig}") == "auth_malformed"  # padded segments are not base64url-unpadded
    assert check(v, f"{head}.{payload}.{sig}==") == "auth_malformed"
    assert check(v, f"{head}.{payload}.{sig[:-1]}!") == "auth_malformed"
    assert check(v, raw_token({"alg": "HS256"}, ["not", "an", "object"], SECRET)) == "auth_malformed"
    assert check(v, raw_token({"alg": "HS256", "crit": ["exp"]}, at(), SECRET)) == "auth_malformed"
    assert check(v, f"{b64(b'[1]')}.{payload}.{sig}") == "auth_malformed"  # header not an object


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (at(), "ok"),
        (at(exp=None), "auth_claims"),  # exp required
        (at(exp=str(NOW + 60)), "auth_claims"),  # an integer, not a numeric string
        (at(exp=float(NOW + 60)), "auth_claims"),
        (at(exp=True), "auth_claims"),
        (at(exp=-1), "auth_claims"),
        (at(exp=NOW - 30), "ok"),  # now <= exp + skew (30)
        (at(exp=NOW - 31), "auth_expired"),
        (at(nbf=NOW + 30), "ok"),
        (at(nbf=NOW + 31), "auth_not_yet_valid"),
        (at(iat=NOW + 31), "auth_not_yet_valid"),
        (at(nbf="later", iat=-5), "ok"),  # not integers >= 0: ignored
        (at(nbf=float(NOW + 100)), "ok"),
    ],
)
def test_time_claims(payload: dict[str, Any], expected: str) -> None:
    assert check(verifier(secret=SECRET), hs256(SECRET, payload)) == expected


def test_clock_skew_and_identity_claims() -> None:
    strict = verifier(secret=SECRET, clock_skew_secs=0, issuer="https://idp/", audience="edge")
    ok = at(iss="https://idp/", aud="edge")
    assert check(strict, hs256(SECRET, ok)) == "ok"
    assert check(strict, hs256(SECRET, at(iss="https://idp/", aud=["x", "edge"]))) == "ok"
    assert check(strict, hs256(SECRET, {**ok, "exp": NOW - 1})) == "auth_expired"
    assert check(strict, hs256(SECRET, {**ok, "iss": "https://other/"})) == "auth_issuer"
    assert check(strict, hs256(SECRET, at(aud="edge"))) == "auth_issuer"  # configured: required
    assert check(strict, hs256(SECRET, {**ok, "aud": "other"})) == "auth_audience"
    assert check(strict, hs256(SECRET, {**ok, "aud": ["other"]})) == "auth_audience"
    assert check(strict, hs256(SECRET, at(iss="https://idp/"))) == "auth_audience"


def test_scopes_and_roles_exactly_as_spooky() -> None:
    scopes, roles = frozenset({"read"}), frozenset({"admin"})
    assert rbac_refusal({"scp": ["read"], "role": "admin"}, scopes, roles) is None
    assert rbac_refusal({"scope": "write read", "roles": ["x", "admin"]}, scopes, roles) is None
    assert rbac_refusal({"scope": "reader", "role": "admin"}, scopes, roles) == "auth_scope"
    assert rbac_refusal({"scp": "read", "roles": "Admin"}, scopes, roles) == "auth_role"
    assert rbac_refusal({"scp": [1, "read"], "role": ["admin"]}, scopes, roles) is None
    assert rbac_refusal({}, frozenset(), frozenset()) is None


def test_forward_claims_rendering(caplog: pytest.LogCaptureFixture) -> None:
    assert claim_header_value("alice") == "alice"
    assert claim_header_value(42) == "42"
    assert claim_header_value(True) == "true"
    assert claim_header_value(["a", "b"]) == "a,b"
    assert claim_header_value({"t": [1, 2]}) == '{"t":[1,2]}'
    assert claim_header_value([1, "b"]) == '[1,"b"]'
    assert claim_header_value(None) is None
    mapping = [("sub", b"x-user-id"), ("tenant", b"x-tenant"), ("evil", b"x-evil"), ("n", b"x-n")]
    headers = forwarded_claims({"sub": "alice", "evil": "a\r\nx-admin: 1", "n": 7}, mapping, "api")
    assert headers == [(b"x-user-id", b"alice"), (b"x-n", b"7")]
    assert "control character" in caplog.text and "a\r\n" not in caplog.text


ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def jwks_verifier(document: bytes, **kwargs: Any) -> JwtVerifier:
    cache = JwksCache(JwksSettings("https://idp/jwks", None, "", 300, 30, 1))
    cache.install(parse_jwks(document), 0.0)
    kwargs.setdefault("jwks_uri", "https://idp/jwks")
    return JwtVerifier(JwtAuthConfig(**kwargs), cache, clock=lambda: NOW)


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_every_asymmetric_algorithm_verifies_with_its_jwk(alg: str) -> None:
    key = private_key(alg)
    v = jwks_verifier(jwks(public_jwk(key, "k1")))
    assert check(v, signed(key, alg, at(), "k1")) == "ok"
    assert check(v, signed(key, alg, at(), "k2")) == "auth_unknown_kid"
    assert check(v, signed(key, alg, at(), None)) == "ok"  # no kid: every key that may verify alg
    other = private_key(alg) if alg[:2] not in ("RS", "PS") else None
    if other is not None:
        assert check(v, signed(other, alg, at(), "k1")) == "auth_invalid_signature"
    assert check(v, signed(key, alg, at(exp=NOW - 100), "k1")) == "auth_expired"


def test_a_jwk_alg_narrows_and_algorithms_restrict() -> None:
    key = private_key("RS256")
    narrowed = jwks_verifier(jwks(public_jwk(key, "k1", alg="RS256")))
    assert check(narrowed, signed(key, "RS256", at(), "k1")) == "ok"
    assert check(narrowed, signed(key, "PS256", at(), "k1")) == "auth_unknown_kid"  # the key may not verify PS256
    only_es = jwks_verifier(jwks(public_jwk(key, "k1")), algorithms=["ES256"])
    assert check(only_es, signed(key, "RS256", at(), "k1")) == "auth_algorithm"
    # default without algorithms: RS512 yes, PS512 (not in the default list) no
    default = jwks_verifier(jwks(public_jwk(key, "k1")))
    assert check(default, signed(key, "RS512", at(), "k1")) == "ok"
    assert check(default, signed(key, "PS512", at(), "k1")) == "auth_algorithm"


def test_algorithm_confusion_and_none_are_refused() -> None:
    key = private_key("RS256")
    jwk = public_jwk(key, "k1")
    # an HMAC token "signed" with the RSA public key (the classic confusion attack)
    from cryptography.hazmat.primitives import serialization

    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = raw_token({"alg": "HS256", "kid": "k1"}, at(), pem.decode())
    only_jwks = jwks_verifier(jwks(jwk))
    assert check(only_jwks, forged) == "auth_algorithm"  # HS256 is not an algorithm of a JWKS setup
    both = jwks_verifier(jwks(jwk), secret=Secret(SECRET))
    assert check(both, forged) == "auth_invalid_signature"  # HMAC is checked with the secret only
    assert check(both, hs256(SECRET, at())) == "ok"
    assert check(both, signed(key, "RS256", at(), "k1")) == "ok"
    assert check(both, unsigned(at())) == "auth_algorithm"
    assert check(both, unsigned(at(), alg="RS256")) == "auth_invalid_signature"
    # a published symmetric key is never used
    oct_jwk = {"kty": "oct", "k": b64(SECRET.encode()), "kid": "sym"}
    with pytest.raises(Exception):
        parse_jwks(jwks(oct_jwk))
    assert check(jwks_verifier(jwks(oct_jwk, jwk)), raw_token({"alg": "HS256", "kid": "sym"}, at(), SECRET)) == "auth_algorithm"


def test_parse_jwks_skips_unusable_keys() -> None:
    good = public_jwk(private_key("ES256"), "good")
    weak = public_jwk(pyjwt_rsa_1024(), "weak")
    private = {**public_jwk(private_key("ES256"), "private"), "d": "AAAA"}
    encryption = {**public_jwk(private_key("ES256"), "enc"), "use": "enc"}
    keys = parse_jwks(jwks(good, weak, private, encryption, {"kty": "RSA"}, {"kid": 5, "kty": "EC"}, "junk"))  # type: ignore[arg-type]
    assert [k.kid for k in keys] == ["good"]
    for bad in (b"not json", b"[]", b'{"keys": {}}', jwks()):
        with pytest.raises(Exception):
            parse_jwks(bad)


def pyjwt_rsa_1024() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_garbage_signatures_are_refusals_not_errors() -> None:
    for alg in ASYMMETRIC:
        key = private_key(alg)
        v = jwks_verifier(jwks(public_jwk(key, "k1")))
        head, payload, _ = signed(key, alg, at(), "k1").split(".")
        for sig in ("", "AA", b64(b"x" * 300)):
            assert check(v, f"{head}.{payload}.{sig}") == "auth_invalid_signature", (alg, sig)


class CountingAlgorithm:
    """Wraps a PyJWT algorithm object and counts the public-key operations."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        self.calls += 1
        return bool(self.inner.verify(msg, key, sig))


def counted(v: JwtVerifier) -> CountingAlgorithm:
    """Route every key of ``v``'s JWKS cache through one counting algorithm object."""
    assert v.jwks is not None
    counter: CountingAlgorithm | None = None
    for key in v.jwks._all:  # the key objects are rebuilt, as a refetch does
        for alg, (algorithm, prepared) in list(key.algorithms.items()):
            counter = counter or CountingAlgorithm(algorithm)
            key.algorithms[alg] = (counter, prepared)  # type: ignore[index]
    assert counter is not None
    return counter


def test_a_verified_signature_is_remembered_but_claims_are_checked_every_time() -> None:
    key = private_key("ES256")
    now = [NOW]
    cache = JwksCache(JwksSettings("https://idp/jwks", None, "", 300, 30, 1))
    cache.install(parse_jwks(jwks(public_jwk(key, "k1"))), 0.0)
    v = JwtVerifier(JwtAuthConfig(jwks_uri="https://idp/jwks", clock_skew_secs=0), cache, clock=lambda: now[0])
    counter = counted(v)
    token = signed(key, "ES256", at(), "k1")
    assert [check(v, token) for _ in range(5)] == ["ok"] * 5
    assert counter.calls == 1  # one public-key operation for five requests
    head, payload, sig = token.split(".")
    forged = f"{head}.{b64(json.dumps(at(sub='mallory')).encode())}.{sig}"
    assert check(v, forged) == "auth_invalid_signature"  # other bytes: checked, and refused
    assert check(v, forged) == "auth_invalid_signature"  # a refusal is never remembered
    assert counter.calls == 3
    now[0] = NOW + 61
    assert check(v, token) == "auth_expired"  # the claims are not remembered: exp still applies
    assert counter.calls == 3


def test_a_remembered_token_is_not_read_again_but_its_payload_is(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(secret=SECRET)
    token = hs256(SECRET, at())
    decoded: list[bytes] = []
    real = tokens._b64decode
    monkeypatch.setattr(tokens, "_b64decode", lambda segment: decoded.append(segment) or real(segment))
    assert check(v, token) == "ok"
    assert len(decoded) == 3  # header, signature, payload
    decoded.clear()
    assert check(v, token) == "ok"
    assert decoded == [token.split(".")[1].encode()]  # the payload only: its claims are checked again
    assert check(v, token[:-2] + ("AA" if not token.endswith("AA") else "BA")) == "auth_invalid_signature"


def test_a_refetched_or_rotated_key_set_forgets_what_its_old_keys_verified() -> None:
    key, rotated = private_key("ES256"), private_key("ES256")
    v = jwks_verifier(jwks(public_jwk(key, "k1")))
    assert v.jwks is not None
    token = signed(key, "ES256", at(), "k1")
    assert check(v, token) == "ok"
    # the same key fetched again (new key objects): verified once more, then remembered
    v.jwks.install(parse_jwks(jwks(public_jwk(key, "k1"))), 1.0)
    counter = counted(v)
    assert [check(v, token) for _ in range(3)] == ["ok"] * 3
    assert counter.calls == 1
    # k1 rotated out, another key now published under the same kid: the token is refused
    v.jwks.install(parse_jwks(jwks(public_jwk(rotated, "k1"))), 2.0)
    assert check(v, token) == "auth_invalid_signature"
    v.jwks.install(parse_jwks(jwks(public_jwk(rotated, "k2"))), 3.0)
    assert check(v, token) == "auth_unknown_kid"


def test_the_verified_memory_is_bounded() -> None:
    v = verifier(secret=SECRET)
    v.verified.capacity = 4
    tokens = [hs256(SECRET, at(n=n)) for n in range(10)]
    assert [check(v, t) for t in tokens] == ["ok"] * 10
    assert len(v.verified) == 4
    assert all(v.verified._entries.get(t.encode()) for t in tokens[-4:])  # the least recent went first
    long = hs256(SECRET, at(pad="x" * 5000))
    assert check(v, long) == "ok"
    assert long.encode() not in v.verified._entries  # over VERIFIED_MAX_TOKEN: checked every time
