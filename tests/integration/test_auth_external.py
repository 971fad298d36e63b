"""External auth of kind http through the real proxy (spooky-head.md section 1 and its
acceptance example 3): the subrequest, every answer class, failure modes and timeouts, the
header-spoofing rule, the breaker; on HTTP/3, HTTP/2 and HTTP/1.1 (Spooky skips external
auth on its TCP listener: we must not)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from spooky_trio.serving.server import Server
from tests.support.auth_servers import AuthServer, run_auth_server
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, ProxyClients, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy


def ext_pool(name: str, prefix: str, backend_url: str, endpoint: str, extra: str = "") -> str:
    return f"""
{name}:
  route: {{path_prefix: "{prefix}"}}
  backends: [{{id: {name}-1, address: "{backend_url}"}}]
  auth:
    external_auth:
      kind: http
      endpoint: "{endpoint}"
      request_headers: [{{name: x-auth-static, value: "1"}}]
      response_header_allowlist: [x-user-id, x-auth-reason]
{extra}
"""


def decisions(server: Server, pool: str, result: str) -> float:
    labels = {"upstream": pool, "step": "external_http", "result": result}
    return server.metrics.registry.get_sample_value("spooky_auth_decisions_total", labels) or 0.0


async def each(clients: ProxyClients, path: str, headers: list[tuple[str, str]] | None = None) -> list:  # type: ignore[type-arg]
    return [await clients.request(protocol, path, headers or []) for protocol in PROTOCOLS]


SPOOF = [("x-user-id", "mallory"), ("X-Auth-Reason", "forged")]


async def test_spooky_example_3(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    down = f"http://127.0.0.1:{free_udp_port()}/check"  # nothing listens there
    async with run_auth_server(None) as auth, run_backend(name="h1") as backend:
        upstream = (ext_pool("api", "/api", backend.url, f"{auth.url}/check")
                    + ext_pool("down", "/down", backend.url, down)
                    + ext_pool("open", "/open", backend.url, f"{auth.url}/check", "      failure_mode: fail_open")
                    + ext_pool("opendown", "/opendown", backend.url, down, "      failure_mode: fail_open"))
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                # auth 204 + x-user-id: alice -> the backend gets only alice
                auth.check_status, auth.check_headers = 204, [("x-user-id", "alice")]
                for reply in await each(clients, "/api/echo", SPOOF):
                    assert reply.status == 200
                    assert reply.echoed("x-user-id") == ["alice"]
                    assert reply.echoed("x-auth-reason") == []  # the client's copy is gone too
                # auth 200 without it, the client sent x-user-id: mallory -> none
                auth.check_status, auth.check_headers = 200, []
                for reply in await each(clients, "/api/echo", SPOOF):
                    assert reply.status == 200 and reply.echoed("x-user-id") == [] and reply.echoed("x-auth-reason") == []
                # auth 403 -> 403 + x-auth-reason, the auth body
                auth.check_status, auth.check_headers, auth.check_body = 403, [("x-auth-reason", "blocked"), ("x-other", "no")], b"go away\n"
                for reply in await each(clients, "/api/echo", SPOOF):
                    assert (reply.status, reply.header("x-auth-reason"), reply.body) == (403, "blocked", b"go away\n")
                    assert reply.header("x-other") is None and (reply.header("content-type") or "").startswith("text/plain")
                # auth down -> 503
                for reply in await each(clients, "/down/echo", SPOOF):
                    assert (reply.status, reply.body) == (503, b"external auth unavailable\n")
                # fail_open: auth 500 -> forwarded, without the client's allowlisted headers
                auth.check_status, auth.check_headers, auth.check_body = 500, [("x-user-id", "ignored")], b""
                for reply in await each(clients, "/open/echo", SPOOF):
                    assert reply.status == 200 and reply.echoed("x-user-id") == [] and reply.echoed("x-auth-reason") == []
                for reply in await each(clients, "/opendown/echo", SPOOF):  # down, fail_open: the same
                    assert reply.status == 200 and reply.echoed("x-user-id") == []
                # silent 1 s (timeout_ms default 1000) -> 504
                auth.check_status, auth.check_delay = 200, 3.0
                started = trio.current_time()
                for reply in await each(clients, "/api/echo"):
                    assert (reply.status, reply.body) == (504, b"external auth timeout\n")
                assert trio.current_time() - started < 3 * 2.0
                # fail_open: a timeout admits the request (still without the client's copies)
                for reply in await each(clients, "/open/echo", SPOOF):
                    assert reply.status == 200 and reply.echoed("x-user-id") == []
    assert decisions(server, "api", "allowed") == 6
    assert decisions(server, "api", "ext_auth_denied") == 3
    assert decisions(server, "api", "ext_auth_timeout") == 3
    assert decisions(server, "down", "ext_auth_error") == 3
    assert decisions(server, "open", "fail_open") == 6 and decisions(server, "opendown", "fail_open") == 3
    calls = server.metrics.registry.get_sample_value
    # pool open failed 3 times (500) then timed out twice: its breaker opened, and the last
    # request was admitted (fail_open) without a call
    assert calls("spooky_auth_outbound_calls_total", {"kind": "external_http", "result": "timeout"}) == 5
    assert calls("spooky_auth_outbound_calls_total", {"kind": "external_http", "result": "2xx"}) == 6
    assert calls("spooky_auth_outbound_calls_total", {"kind": "external_http", "result": "4xx"}) == 3
    assert calls("spooky_auth_outbound_calls_total", {"kind": "external_http", "result": "5xx"}) == 3
    assert calls("spooky_auth_outbound_calls_total", {"kind": "external_http", "result": "connect"}) == 6
    access = [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]
    assert {a["reason"] for a in access} == {"ok", "ext_auth_denied", "ext_auth_error", "ext_auth_timeout"}
    assert {a["protocol"] for a in access if a["reason"] == "ext_auth_timeout"} == {"HTTP/3", "HTTP/2", "HTTP/1.1"}


async def test_the_subrequest(certs_dir: Path) -> None:
    async with run_auth_server(None) as auth, run_backend(name="h1") as backend:
        async with running_proxy(proxy_yaml(ext_pool("api", "/api", backend.url, f"{auth.url}/check"), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                sent = [("cookie", "session=1"), ("x-auth-static", "client"), ("x-spooky-backend-address", "10.0.0.1:80"),
                        ("x-spooky-route-upstream", "forged"), ("x-spooky-original-path", "/forged"), ("accept-encoding", "gzip"),
                        ("x-user-id", "mallory"), ("authorization", "Bearer t")]
                for protocol in PROTOCOLS:
                    reply = await clients.request(protocol, "/api/echo?q=1&r=2", sent, method="POST", body=b"payload")
                    assert reply.status == 200, reply.body
                    assert reply.echoed("authorization") == ["Bearer t"]  # an allowed request keeps its headers
                    check = auth.checks[-1]
                    assert check[":method"] == ["GET"]
                    assert check["x-spooky-original-method"] == ["POST"]
                    assert check["x-spooky-original-path"] == ["/api/echo?q=1&r=2"]
                    assert check["x-spooky-original-authority"][0].startswith("localhost")
                    assert check["x-spooky-route-upstream"] == ["api"]
                    assert "x-spooky-backend-address" not in check  # we pick the backend later: never sent
                    assert check["x-auth-static"] == ["1"]  # request_headers replace the client's
                    assert check["cookie"] == ["session=1"] and check["authorization"] == ["Bearer t"]
                    assert check["accept-encoding"] == ["identity"]
                    assert "x-user-id" not in check  # removed before any auth step
                    assert "content-length" not in check and check["host"] == [f"127.0.0.1:{auth.port}"]
                    assert reply.echoed("x-spooky-route-upstream") == ["forged"]  # only the subrequest's copy is replaced


async def test_every_answer_class(certs_dir: Path) -> None:
    async with run_auth_server(certs_dir) as auth, run_backend(name="h1") as backend:
        tls = f'      ca_file: "{certs_dir / "ca.pem"}"'
        async with running_proxy(proxy_yaml(ext_pool("api", "/", backend.url, f"{auth.url}/check", tls), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                async def expect(status: int, headers: list[tuple[str, str]], body: bytes, want: int, want_body: bytes,
                                 want_headers: dict[str, str | None]) -> None:
                    auth.check_status, auth.check_headers, auth.check_body = status, headers, body
                    for reply in await each(clients, "/echo", SPOOF):
                        assert reply.status == want, (status, reply.status, reply.body)
                        if want != 200:
                            assert reply.body == want_body
                        for name, value in want_headers.items():
                            assert reply.header(name) == value, (status, name)

                await expect(200, [("x-user-id", "a"), ("x-user-id", "b"), ("authorization", "Bearer injected")], b"", 200, b"", {})
                reply = await clients.request("h3", "/echo")
                assert reply.echoed("x-user-id") == ["b"]  # repeats: the last wins
                assert reply.echoed("authorization") == []  # never injected (and not allowlisted)
                await expect(302, [("location", "https://login.example/"), ("x-auth-reason", "login")], b"ignored", 302, b"",
                             {"location": "https://login.example/", "x-auth-reason": "login"})
                await expect(302, [], b"", 503, b"external auth unavailable\n", {})
                await expect(401, [("www-authenticate", 'Basic realm="edge"')], b"who?\n", 401, b"who?\n", {"www-authenticate": 'Basic realm="edge"'})
                await expect(401, [], b"nope\n", 401, b"nope\n", {"www-authenticate": None})
                await expect(429, [("x-auth-reason", "slow down"), ("content-type", "application/json")], b"{}", 429, b"{}",
                             {"x-auth-reason": "slow down", "content-type": "text/plain; charset=utf-8"})
                await expect(200, [], b"x" * (64 * 1024 + 1), 503, b"external auth unavailable\n", {})
                await expect(200, [], b"x" * (64 * 1024), 200, b"", {})
    assert decisions(server, "api", "ext_auth_redirect") == 3


async def test_breaker_fails_fast_after_five_failures(certs_dir: Path) -> None:
    async with run_auth_server(None) as auth, run_backend(name="h1") as backend:
        async with running_proxy(proxy_yaml(ext_pool("api", "/", backend.url, f"{auth.url}/check"), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                auth.check_status = 502
                for i in range(8):
                    reply = await clients.request(PROTOCOLS[i % 3], "/echo")
                    assert reply.status == 503
                assert len(auth.checks) == 5  # then the breaker answered without calling
                await trio.sleep(1.1)  # open_ms: one probe goes through
                auth.check_status = 200
                assert (await clients.request("h2", "/echo")).status == 200
                assert len(auth.checks) == 6
    assert decisions(server, "api", "ext_auth_breaker_open") == 3
