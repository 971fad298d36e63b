"""Local auth through the real proxy (docs/auth.md): Spooky's api_key and HS256 jwt blocks
(spooky-head.md section 1 and its acceptance examples 1 and 2), JWKS over a real HTTPS
server, scopes and roles, forward_claims, on HTTP/3, HTTP/2 and HTTP/1.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from spooky_trio.serving.server import Server
from tests.support.auth_servers import run_auth_server
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy
from tests.support.tokens import claims, hs256, jwks, new_rsa_key, public_jwk, signed, unsigned


def pools(url: str, auth_by_prefix: dict[str, str]) -> str:
    out = []
    for index, (prefix, auth) in enumerate(auth_by_prefix.items()):
        out.append(f"""
p{index}:
  route: {{path_prefix: "{prefix}"}}
  backends: [{{id: b{index}, address: "{url}"}}]
{auth}
""")
    return "\n".join(out)


def decisions(server: Server, pool: str, step: str, result: str) -> float:
    return server.metrics.registry.get_sample_value("spooky_auth_decisions_total", {"upstream": pool, "step": step, "result": result}) or 0.0


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.access["reason"] for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


async def test_spooky_api_key_example(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    async with run_backend(name="h1") as backend:
        auth = "  auth: {api_key: {keys: [k1, k2]}}"
        async with running_proxy(proxy_yaml(pools(backend.url, {"/api": auth, "/open": ""}), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    missing = await clients.request(protocol, "/api/echo")
                    assert (missing.status, missing.header("www-authenticate"), missing.body) == (401, "ApiKey", b"unauthorized\n"), protocol
                    assert (missing.header("content-type") or "").startswith("text/plain")
                    wrong = await clients.request(protocol, "/api/echo", [("X-Api-Key", "k3")])
                    assert (wrong.status, wrong.header("www-authenticate")) == (401, "ApiKey")
                    ok = await clients.request(protocol, "/api/echo", [("X-Api-Key", "k2")])
                    assert ok.status == 200, (protocol, ok.body)
                    assert ok.echoed("x-api-key") == ["k2"]  # local auth strips nothing
                    assert (await clients.request(protocol, "/open/echo")).status == 200  # another pool: no auth
    assert decisions(server, "p0", "api_key", "auth_missing") == 3
    assert decisions(server, "p0", "api_key", "auth_invalid_key") == 3
    assert decisions(server, "p0", "api_key", "allowed") == 3
    assert decisions(server, "p1", "api_key", "allowed") == 0
    assert sorted(set(reasons(caplog))) == ["auth_invalid_key", "auth_missing", "ok"]
    assert len(backend.requests) == 6  # refused requests never reached the backend


SECRET = "s3cret"
SPOOKY_JWT = "  auth: {jwt: {secret: s3cret, audience: edge}, required_scopes: [read], required_roles: [admin]}"
STRICT_JWT = "  auth: {jwt: {secret: s3cret, issuer: 'https://idp.example/', audience: api, clock_skew_secs: 5}}"


async def test_spooky_jwt_example_and_every_refusal(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    good = claims(aud=["edge"], scp=["read"], role="admin")
    strict = claims(iss="https://idp.example/", aud="api")
    cases = [  # (path, token, status, reason)
        ("/a/echo", hs256(SECRET, good), 200, "ok"),
        ("/a/echo", hs256(SECRET, good, alg="HS384"), 401, "auth_algorithm"),
        ("/a/echo", hs256(SECRET, {**good, "exp": None}), 401, "auth_claims"),
        ("/a/echo", hs256(SECRET, {**good, "role": "user"}), 401, "auth_role"),
        ("/a/echo", hs256(SECRET, {**good, "scp": ["write"]}), 401, "auth_scope"),
        ("/a/echo", hs256("wrong", good), 401, "auth_invalid_signature"),
        ("/a/echo", unsigned(good), 401, "auth_algorithm"),
        ("/a/echo", None, 401, "auth_missing"),
        ("/s/echo", hs256(SECRET, strict), 200, "ok"),
        ("/s/echo", hs256(SECRET, {**strict, "exp": strict["exp"] - 3600 - 10}), 401, "auth_expired"),
        ("/s/echo", hs256(SECRET, {**strict, "nbf": strict["exp"]}), 401, "auth_not_yet_valid"),
        ("/s/echo", hs256(SECRET, {**strict, "iss": "https://evil.example/"}), 401, "auth_issuer"),
        ("/s/echo", hs256(SECRET, {**strict, "aud": "other"}), 401, "auth_audience"),
    ]
    async with run_backend(name="h1") as backend:
        async with running_proxy(proxy_yaml(pools(backend.url, {"/a": SPOOKY_JWT, "/s": STRICT_JWT}), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    for path, token, status, reason in cases:
                        headers = [("authorization", f"Bearer {token}")] if token else []
                        reply = await clients.request(protocol, path, headers)
                        assert reply.status == status, (protocol, path, reason, reply.body)
                        if status == 401:
                            assert (reply.header("www-authenticate"), reply.body) == ("Bearer", b"unauthorized\n")
                        else:
                            assert reply.echoed("authorization") == [f"Bearer {token}"]  # reaches the backend
                    not_bearer = await clients.request(protocol, "/a/echo", [("authorization", f"Basic {hs256(SECRET, good)}")])
                    assert not_bearer.status == 401
    seen = reasons(caplog)
    for _path, _token, _status, reason in cases:
        assert seen.count(reason) >= 3, reason
    assert decisions(server, "p0", "jwt", "auth_malformed") == 3


async def test_insufficient_scope_403_and_forward_claims(certs_dir: Path) -> None:
    auth = """
  auth:
    jwt: {secret: s3cret}
    required_scopes: [read]
    insufficient_scope_status: 403
    forward_claims: {sub: x-user-id, tenant: x-tenant, groups: x-groups, level: x-level}
"""
    async with run_backend(name="h1") as backend:
        async with running_proxy(proxy_yaml(pools(backend.url, {"/": auth}), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    spoof = [("x-user-id", "mallory"), ("x-tenant", "evil"), ("X-Level", "99")]
                    token = hs256(SECRET, claims(scope="read write", sub="alice", groups=["a", "b"], level=3))
                    ok = await clients.request(protocol, "/echo", [("authorization", f"Bearer {token}"), *spoof])
                    assert ok.status == 200
                    assert ok.echoed("x-user-id") == ["alice"]
                    assert ok.echoed("x-tenant") == []  # a missing claim sends nothing, the client's copy is gone
                    assert ok.echoed("x-groups") == ["a,b"] and ok.echoed("x-level") == ["3"]
                    short = hs256(SECRET, claims(scope="write"))
                    denied = await clients.request(protocol, "/echo", [("authorization", f"Bearer {short}")])
                    assert denied.status == 403
                    assert denied.header("www-authenticate") == 'Bearer error="insufficient_scope"'
                    expired = hs256(SECRET, claims(scope="read", exp=1000))
                    assert (await clients.request(protocol, "/echo", [("authorization", f"Bearer {expired}")])).status == 401


def jwks_pool(url: str, idp_url: str, certs_dir: Path, *, extra: str = "", min_refresh: int = 30) -> str:
    auth = f"""
  auth:
    jwt:
      jwks_uri: "{idp_url}/jwks"
      ca_file: "{certs_dir / 'ca.pem'}"
      issuer: "https://idp.example/"
      audience: api
      jwks_min_refresh_secs: {min_refresh}
{extra}
"""
    return pools(url, {"/": auth})


def rs(key: object, kid: str, **extra: object) -> str:
    return signed(key, "RS256", claims(**{"iss": "https://idp.example/", "aud": "api", **extra}), kid)


async def test_jwks_every_refusal_rotation_and_flood(certs_dir: Path) -> None:
    old, new = new_rsa_key(), new_rsa_key()
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        idp.jwks = jwks(public_jwk(old, "old"))
        async with running_proxy(proxy_yaml(jwks_pool(backend.url, idp.url, certs_dir), certs_dir=certs_dir)) as server:
            assert len(idp.jwks_fetches) == 1  # fetched before the server reported started
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                cases = [
                    (rs(old, "old"), 200),
                    (rs(old, "old", exp=1000), 401),
                    (rs(old, "old", nbf=claims()["exp"]), 401),
                    (rs(old, "old", iss="https://other/"), 401),
                    (rs(old, "old", aud="web"), 401),
                    (rs(new, "old"), 401),  # right kid, wrong key
                    (hs256(SECRET, claims(iss="https://idp.example/", aud="api")), 401),  # HMAC: not allowed with JWKS
                ]
                for protocol in PROTOCOLS:
                    for token, status in cases:
                        reply = await clients.request(protocol, "/echo", [("authorization", f"Bearer {token}")])
                        assert reply.status == status, (protocol, reply.body)
                        if status == 401:
                            assert (reply.header("www-authenticate"), reply.body) == ("Bearer", b"unauthorized\n")
                    missing = await clients.request(protocol, "/echo")
                    assert (missing.status, missing.header("www-authenticate")) == (401, "Bearer")
                assert len(idp.jwks_fetches) == 1
                # rotation: the IdP publishes a new key; a token with its kid triggers exactly one refetch
                idp.jwks = jwks(public_jwk(old, "old"), public_jwk(new, "new"))
                for protocol in PROTOCOLS:
                    assert (await clients.request(protocol, "/echo", [("authorization", f"Bearer {rs(new, 'new')}")])).status == 200
                assert len(idp.jwks_fetches) == 2
                # a flood of random kids within jwks_min_refresh_secs: no fetch at all
                for i in range(30):
                    reply = await clients.request(PROTOCOLS[i % 3], "/echo", [("authorization", f"Bearer {rs(new, f'random-{i}')}")])
                    assert reply.status == 401
                assert len(idp.jwks_fetches) == 2
    assert decisions(server, "p0", "jwt", "auth_unknown_kid") == 30
    assert decisions(server, "p0", "jwt", "auth_invalid_signature") == 3


async def test_jwks_server_down_cached_keys_keep_working(certs_dir: Path) -> None:
    key = new_rsa_key()
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        idp.jwks = jwks(public_jwk(key, "k1"))
        config = proxy_yaml(jwks_pool(backend.url, idp.url, certs_dir, extra="      jwks_cache_secs: 1", min_refresh=1),
                            certs_dir=certs_dir)
        async with running_proxy(config) as server:
            idp.jwks_status = 503
            cache = server.state.auth.jwks_caches()[0]
            while cache.failures == 0:  # the refresh after jwks_cache_secs fails (polled: a real clock)
                await trio.sleep(0.05)
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    reply = await clients.request(protocol, "/echo", [("authorization", f"Bearer {rs(key, 'k1')}")])
                    assert reply.status == 200
                    unknown = await clients.request(protocol, "/echo", [("authorization", f"Bearer {rs(key, 'k2')}")])
                    assert unknown.status == 401
            assert server.metrics.registry.get_sample_value("spooky_auth_jwks_stale_served_total") == 3
            assert (server.metrics.registry.get_sample_value("spooky_auth_outbound_calls_total", {"kind": "jwks", "result": "5xx"}) or 0) >= 1


async def test_jwks_never_fetched_answers_503(certs_dir: Path) -> None:
    key = new_rsa_key()
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        idp.jwks_status = 500
        async with running_proxy(proxy_yaml(jwks_pool(backend.url, idp.url, certs_dir), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    reply = await clients.request(protocol, "/echo", [("authorization", f"Bearer {rs(key, 'k1')}")])
                    assert (reply.status, reply.header("retry-after")) == (503, "1"), reply.body
                    assert reply.body == b"authentication keys unavailable\n"
            assert decisions(server, "p0", "jwt", "auth_jwks_unavailable") == 3


async def test_reload_rotates_keys_and_secrets_and_keeps_the_jwks_cache(certs_dir: Path, tmp_path: Path) -> None:
    key = new_rsa_key()
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        idp.jwks = jwks(public_jwk(key, "k1"))
        port = free_udp_port()

        def config(api_keys: str, secret: str) -> str:
            return proxy_yaml(pools(backend.url, {
                "/k": f"  auth: {{api_key: {{keys: [{api_keys}]}}}}",
                "/h": f"  auth: {{jwt: {{secret: {secret}}}}}",
            }) + jwks_pool(backend.url, idp.url, certs_dir).replace("p0:", "p9:").replace('path_prefix: "/"', 'path_prefix: "/j"').replace("b0", "b9"),
                certs_dir=certs_dir, port=port)

        async with running_proxy(config("old-key", "old-secret"), config_path=tmp_path / "spooky.yaml") as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                old_jwt, new_jwt = hs256("old-secret", claims()), hs256("new-secret", claims())
                jwks_token = rs(key, "k1")
                for protocol in PROTOCOLS:
                    assert (await clients.request(protocol, "/k/echo", [("x-api-key", "old-key")])).status == 200
                    assert (await clients.request(protocol, "/h/echo", [("authorization", f"Bearer {old_jwt}")])).status == 200
                    assert (await clients.request(protocol, "/j/echo", [("authorization", f"Bearer {jwks_token}")])).status == 200
                fetches = len(idp.jwks_fetches)
                (tmp_path / "spooky.yaml").write_text(config("new-key, next-key", "new-secret"))
                outcome = await server.reloads.reload_file("test")
                assert outcome.status == 200, outcome.body
                for protocol in PROTOCOLS:
                    assert (await clients.request(protocol, "/k/echo", [("x-api-key", "old-key")])).status == 401
                    assert (await clients.request(protocol, "/k/echo", [("x-api-key", "next-key")])).status == 200
                    assert (await clients.request(protocol, "/h/echo", [("authorization", f"Bearer {old_jwt}")])).status == 401
                    assert (await clients.request(protocol, "/h/echo", [("authorization", f"Bearer {new_jwt}")])).status == 200
                    assert (await clients.request(protocol, "/j/echo", [("authorization", f"Bearer {jwks_token}")])).status == 200
                assert len(idp.jwks_fetches) == fetches  # the JWKS cache outlived the generation
                assert len(server.state.auth.jwks_caches()) == 1
                # a reload that drops jwks_uri stops its refresher
                (tmp_path / "spooky.yaml").write_text(proxy_yaml(pools(backend.url, {"/k": "  auth: {api_key: {keys: [k]}}"}), certs_dir=certs_dir, port=port))
                assert (await server.reloads.reload_file("test")).status == 200
                assert server.state.auth.jwks_caches() == []
