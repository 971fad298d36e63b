"""External auth of kind oidc through the real proxy (spooky-head.md section 1 and its
acceptance example 4; extensions.md section 4): bearer token, discovery (fetched once, then
cached), introspection over HTTPS with the form Spooky sends, every refusal, errors and
timeouts, the introspection cache; on HTTP/3, HTTP/2 and HTTP/1.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.observability.logging import LIBRARY_LOGGERS
from spooky_trio.serving.server import Server
from tests.integration.test_observability import TOKEN, observability_yaml
from tests.support.auth_servers import run_auth_server
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy

CLIENT_SECRET = "oidc-client-secret-value"


def oidc_pool(backend_url: str, issuer: str, certs_dir: Path, extra: str = "") -> str:
    return f"""
api:
  route: {{path_prefix: /}}
  backends: [{{id: a, address: "{backend_url}"}}]
  auth:
    external_auth:
      kind: oidc
      issuer_url: "{issuer}"
      client_id: edge
      scopes: [read]
      ca_file: "{certs_dir / 'ca.pem'}"
{extra}
"""


def decisions(server: Server, result: str) -> float:
    return server.metrics.registry.get_sample_value("spooky_auth_decisions_total", {"upstream": "api", "step": "oidc", "result": result}) or 0.0


BEARER = [("authorization", "Bearer token-1")]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log line at debug, the libraries at warning: what ``log.level: debug`` gives."""
    caplog.set_level(logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)
    return caplog


async def test_spooky_example_4_and_every_refusal(certs_dir: Path, debug_logs: pytest.LogCaptureFixture) -> None:
    caplog = debug_logs
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        secret_file = certs_dir.parent / "oidc-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        extra = f'      client_secret_file: "{secret_file}"\n      audience: "api aud"'
        async with running_proxy(proxy_yaml(oidc_pool(backend.url, idp.url + "/", certs_dir, extra), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                cases = [  # (request headers, introspection status, answer, status, body)
                    ([], 200, {"active": True}, 401, b"missing bearer token\n"),
                    ([("authorization", "Basic dXNlcg==")], 200, {"active": True}, 401, b"invalid bearer token\n"),
                    (BEARER, 200, {"active": False}, 403, b"inactive oidc token\n"),
                    (BEARER, 200, {"active": "true", "scope": "read"}, 403, b"inactive oidc token\n"),
                    (BEARER, 200, {"active": True, "scope": "write"}, 403, b"missing oidc scopes\n"),
                    (BEARER, 200, {"active": True, "scope": "read", "iss": "https://evil.example"}, 403, b"unexpected oidc issuer\n"),
                    (BEARER, 200, {"active": True, "scope": "read", "aud": ["web"]}, 403, b"unexpected oidc audience\n"),
                    (BEARER, 401, {"error": "invalid_client"}, 403, b"oidc token rejected\n"),
                    (BEARER, 503, {}, 503, b"external auth unavailable\n"),
                    (BEARER, 200, {"active": True, "scope": "read write", "iss": idp.url, "aud": "api aud"}, 200, b""),
                    (BEARER, 200, {"active": True, "scope": "read"}, 200, b""),  # iss and aud are optional
                ]
                for headers, status, answer, want, body in cases:
                    idp.introspection_status, idp.introspection = status, answer
                    for protocol in PROTOCOLS:
                        reply = await clients.request(protocol, "/echo", headers)
                        assert reply.status == want, (protocol, answer, reply.body)
                        if want != 200:
                            assert reply.body == body
                        if want == 401:
                            assert reply.header("www-authenticate") == "Bearer"
                        else:
                            assert reply.header("www-authenticate") is None
                assert idp.discovery_fetches == 1  # discovery cached across every request
                form = idp.introspections[-1]["form"]
                assert form == {"token": "token-1", "client_id": "edge", "client_secret": CLIENT_SECRET, "audience": "api aud"}
                assert idp.introspections[-1]["headers"]["content-type"] == ["application/x-www-form-urlencoded"]
                assert idp.introspections[-1]["headers"]["x-spooky-route-upstream"] == ["api"]
                assert len(idp.introspections) == 9 * 3  # no cache by default (Spooky)
    assert decisions(server, "auth_missing") == 3 and decisions(server, "oidc_inactive") == 6
    assert decisions(server, "oidc_rejected") == 3 and decisions(server, "ext_auth_error") == 3
    assert decisions(server, "allowed") == 6
    leaks = [(r.name, r.getMessage()[:300]) for r in caplog.records if CLIENT_SECRET in r.getMessage() or "token-1" in r.getMessage()]
    assert not leaks, leaks


async def test_timeouts_failure_modes_and_the_introspection_cache(certs_dir: Path) -> None:
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        # a timeout well above a loaded box's introspection time, and a delay far above it
        extra = "      timeout_ms: 1500\n      failure_mode: fail_open\n      introspection_cache_secs: 60"
        upstream = oidc_pool(backend.url, idp.url, certs_dir, extra)
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                idp.introspection = {"active": True, "scope": "read"}
                for protocol in PROTOCOLS:  # one introspection, then cached
                    assert (await clients.request(protocol, "/echo", BEARER)).status == 200
                assert len(idp.introspections) == 1
                idp.introspection = {"active": False}
                other = [("authorization", "Bearer token-2")]
                for protocol in PROTOCOLS:  # an inactive answer is never cached
                    assert (await clients.request(protocol, "/echo", other)).status == 403
                assert len(idp.introspections) == 4
                idp.introspection_delay = 30.0  # timeout with fail_open: admitted (the three at once)
                statuses: list[int] = []

                async def timed_out(protocol: str) -> None:
                    statuses.append((await clients.request(protocol, "/echo", [("authorization", "Bearer token-3")])).status)

                async with trio.open_nursery() as nursery:
                    for protocol in PROTOCOLS:
                        nursery.start_soon(timed_out, protocol)
                assert statuses == [200] * len(PROTOCOLS)
                assert (await clients.request("h3", "/echo")).status == 401  # no token: a refusal, not a failure
    assert decisions(server, "fail_open") == 3


async def test_timeout_fail_closed_is_504_and_discovery_errors_are_503(certs_dir: Path) -> None:
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        async with running_proxy(proxy_yaml(oidc_pool(backend.url, idp.url, certs_dir, "      timeout_ms: 300"), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                idp.introspection_delay = 1.0
                for protocol in PROTOCOLS:
                    reply = await clients.request(protocol, "/echo", BEARER)
                    assert (reply.status, reply.body) == (504, b"external auth timeout\n")
        idp.discovery_status = 500  # a fresh proxy: discovery fails
        async with running_proxy(proxy_yaml(oidc_pool(backend.url, idp.url, certs_dir), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                reply = await clients.request("h2", "/echo", BEARER)
                assert (reply.status, reply.body) == (503, b"external auth unavailable\n")


async def test_runtime_logs_and_metrics_never_show_secrets(certs_dir: Path, debug_logs: pytest.LogCaptureFixture) -> None:
    caplog = debug_logs
    api_key, jwt_secret = "api-key-value-123", "jwt-secret-value-456"
    metrics_port, control_port = free_udp_port(), free_udp_port()
    async with run_auth_server(certs_dir) as idp, run_backend(name="h1") as backend:
        upstream = oidc_pool(backend.url, idp.url, certs_dir, f"      client_secret: {CLIENT_SECRET}") + f"""
keys:
  route: {{path_prefix: /keys}}
  backends: [{{id: k, address: "{backend.url}"}}]
  auth: {{api_key: {{keys: [{api_key}]}}, jwt: {{secret: {jwt_secret}}}}}
"""
        config = proxy_yaml(upstream, certs_dir=certs_dir, extra=observability_yaml(metrics_port, control_port))
        async with running_proxy(config) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    await clients.request(protocol, "/keys/echo", [("x-api-key", api_key), ("authorization", f"Bearer {jwt_secret}")])
                    await clients.request(protocol, "/echo", BEARER)
            async with httpx.AsyncClient() as http:
                runtime = await http.get(f"http://127.0.0.1:{control_port}/admin/runtime", headers={"authorization": f"Bearer {TOKEN}"})
                metrics = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
    text = runtime.text
    auth = json.loads(text)["auth"]
    assert auth["pools"]["keys"]["api_key"] == {"header_name": "x-api-key", "keys": "***", "key_count": 1}
    assert auth["pools"]["keys"]["jwt"]["secret"] == "***"
    assert auth["pools"]["api"]["external_auth"]["client_secret"] == "***"
    assert auth["oidc_discovery"][0]["fetches"] == 1
    for secret in (api_key, jwt_secret, CLIENT_SECRET, "token-1"):
        assert secret not in text and secret not in metrics.text and secret not in caplog.text, secret
    assert repr(server.config).count("***") >= 3 and api_key not in repr(server.config)
