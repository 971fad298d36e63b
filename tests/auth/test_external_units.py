"""External auth and OIDC without sockets (auth/external.py, auth/oidc.py): the subrequest's
headers, Spooky's answer mapping, the discovery cache on a MockClock, the introspection
cache and the introspection answer rules."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.auth.external import ALLOW, DENY, ERROR, injectable, interpret, strip_headers, subrequest_headers
from spooky_trio.auth.oidc import DiscoveryCache, IntrospectionCache, OidcIntrospection, discovery_url, introspection_endpoint_of
from spooky_trio.auth.outbound import OutboundError, OutboundResponse
from spooky_trio.config.schema_auth import ExternalAuthConfig
from spooky_trio.http.messages import DownstreamRequest


def request(headers: list[tuple[bytes, bytes]]) -> DownstreamRequest:
    return DownstreamRequest(method=b"PUT", scheme=b"https", authority=b"api.example:8443", path=b"/v1/x?y=1", headers=headers,
                             protocol="HTTP/2", client_address=("192.0.2.1", 1))


def test_subrequest_headers() -> None:
    client = [(b"cookie", b"a=1"), (b"content-length", b"5"), (b"te", b"trailers"), (b"x-static", b"client"),
              (b"x-spooky-backend-address", b"1.2.3.4:80"), (b"x-spooky-original-method", b"GET"), (b"expect", b"100-continue")]
    out = subrequest_headers(request(client), [(b"x-static", b"1")], "api")
    assert out == [(b"cookie", b"a=1"), (b"x-static", b"1"), (b"x-spooky-original-method", b"PUT"),
                   (b"x-spooky-original-path", b"/v1/x?y=1"), (b"x-spooky-original-authority", b"api.example:8443"),
                   (b"x-spooky-route-upstream", b"api")]


def test_never_injected_names_are_neither_injected_nor_stripped() -> None:
    allow = injectable(["X-User-Id", "authorization", "Location", "x-forwarded-for", "host", "set-cookie"])
    assert allow == {b"x-user-id", b"set-cookie"}
    headers = [(b"authorization", b"Bearer t"), (b"x-user-id", b"m"), (b"x-user-id", b"n"), (b"host", b"h")]
    assert strip_headers(headers, allow) == [(b"authorization", b"Bearer t"), (b"host", b"h")]


def answer(status: int, headers: list[tuple[bytes, bytes]] = (), body: bytes = b"") -> OutboundResponse:  # type: ignore[assignment]
    return OutboundResponse(status, list(headers), body, 0.01)


def test_answer_mapping() -> None:
    allow = injectable(["x-user-id", "x-reason"])
    ok = interpret(answer(204, [(b"x-user-id", b"a"), (b"x-user-id", b"b"), (b"x-other", b"o")]), allow)
    assert (ok.kind, ok.inject) == (ALLOW, [(b"x-user-id", b"b")])
    redirect = interpret(answer(307, [(b"location", b"/login"), (b"x-reason", b"r")], b"body"), allow)
    assert (redirect.kind, redirect.status, redirect.body) == (DENY, 307, b"")
    assert redirect.headers == [(b"content-type", b"text/plain; charset=utf-8"), (b"x-reason", b"r"), (b"location", b"/login")]
    assert interpret(answer(301), allow).kind == ERROR
    challenge = interpret(answer(401, [(b"www-authenticate", b"Basic")], b"no"), allow)
    assert (challenge.kind, challenge.body, challenge.headers[-1]) == (DENY, b"no", (b"www-authenticate", b"Basic"))
    assert interpret(answer(404, [(b"www-authenticate", b"Basic")]), allow).headers == [(b"content-type", b"text/plain; charset=utf-8")]
    for status in (500, 502, 599, 100, 199):
        assert interpret(answer(status), allow).kind == ERROR, status


def oidc_config(**kwargs: object) -> ExternalAuthConfig:
    return ExternalAuthConfig(**{"kind": "oidc", "issuer_url": "https://idp.example/", "client_id": "edge", **kwargs})  # type: ignore[arg-type]


def test_discovery_url_and_document_rules() -> None:
    assert discovery_url(oidc_config()) == "https://idp.example/.well-known/openid-configuration"
    assert discovery_url(oidc_config(discovery_url="https://idp.example/d")) == "https://idp.example/d"
    assert introspection_endpoint_of(b'{"introspection_endpoint": "https://idp/i"}') == "https://idp/i"
    assert introspection_endpoint_of(b'{"introspection_endpoint": "http://127.0.0.1:9/i"}') == "http://127.0.0.1:9/i"
    for bad in (b"nope", b"[]", b"{}", b'{"introspection_endpoint": "http://idp.example/i"}', b'{"introspection_endpoint": 5}'):
        try:
            introspection_endpoint_of(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


async def test_discovery_cache_coalesces_caches_and_keeps_the_last_good(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    calls: list[float] = []
    state = {"fail": False}

    async def fetch() -> bytes:
        calls.append(trio.current_time())
        await trio.sleep(0.1)
        if state["fail"]:
            raise OutboundError("connect", "refused")
        return b'{"introspection_endpoint": "https://idp/i"}'

    cache = DiscoveryCache("https://idp/.well-known/openid-configuration", cache_secs=60)
    assert cache.should_fetch(0) and not cache.should_fetch(0)  # the second caller coalesces
    nursery.start_soon(cache.fetch_once, fetch)
    await cache.wait(1)
    assert cache.endpoint == "https://idp/i" and cache.usable(0)
    assert not cache.should_fetch(trio.current_time())  # fresh
    await trio.sleep(61)
    state["fail"] = True
    assert cache.should_fetch(trio.current_time())
    await cache.fetch_once(fetch)
    assert cache.usable(trio.current_time()) and cache.last_error  # stale but the last good one
    assert not cache.should_fetch(trio.current_time())  # a retry waits a second after a failure
    await trio.sleep(1)
    assert cache.should_fetch(trio.current_time())
    assert len(calls) == 2
    no_cache = DiscoveryCache("https://idp/d", cache_secs=0)
    await no_cache.fetch_once(fetch)
    assert not no_cache.usable(trio.current_time() + 1)  # with cache 0, only a fetch after the request counts


async def test_introspection_cache_expiry_and_bound(autojump_clock: trio.testing.MockClock) -> None:
    cache = IntrospectionCache(ttl=10, max_entries=2)
    cache.store(b"a", 0, exp=None)
    assert cache.hit(b"a", 9.9, 0) and not cache.hit(b"a", 10, 0)
    cache.store(b"b", 0, exp=100.0)
    assert not cache.hit(b"b", 1, wall=100.0)  # the token's own exp ends it sooner
    for key in (b"c", b"d", b"e"):
        cache.store(key, 0, None)
    assert len(cache) == 2 and not cache.hit(b"c", 1, 0) and cache.hit(b"e", 1, 0)


def test_introspection_answer_rules() -> None:
    config = oidc_config(audience="api", scopes=["read", "write"])
    judge = OidcIntrospection(config, None, DiscoveryCache("u", 1), lambda c: None, None)._judge  # type: ignore[arg-type]

    def reason(status: int, body: bytes) -> str:
        verdict, _exp = judge(status, body)
        return verdict.reason or verdict.kind

    assert reason(200, b'{"active": true, "scope": "write read"}') == "allow"
    assert reason(200, b'{"active": true, "scope": "read"}') == "oidc_scope"
    assert reason(200, b'{"active": 1, "scope": "read write"}') == "oidc_inactive"
    assert reason(200, b'{"active": true, "scope": "read write", "iss": "https://idp.example"}') == "allow"
    assert reason(200, b'{"active": true, "scope": "read write", "iss": "https://other/"}') == "oidc_issuer"
    assert reason(200, b'{"active": true, "scope": "read write", "aud": ["x", "api"]}') == "allow"
    assert reason(200, b'{"active": true, "scope": "read write", "aud": "x"}') == "oidc_audience"
    assert reason(400, b"") == "oidc_rejected" and reason(499, b"{}") == "oidc_rejected"
    assert reason(500, b"") == "error" and reason(302, b"") == "error"
    assert reason(200, b"[1]") == "error" and reason(200, b"not json") == "error"
    assert judge(200, b'{"active": true, "scope": "read write", "exp": 123}')[1] == 123.0
