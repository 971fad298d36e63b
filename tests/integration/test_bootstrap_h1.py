"""HTTP/1.1 hygiene on the bootstrap listener: smuggling defences, slowloris, header limits,
keep-alive limits and drain, with raw TLS clients against a real proxy and backend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.backends import run_backend
from tests.support.bootstrap import client_context, read_response_head, read_until_close, status_of, tls_connect
from tests.support.proxy import proxy_yaml, running_proxy

POOL = """
app:
  route:
    path_prefix: "/"
  backends:
    - id: "app-1"
      address: "{url}"
"""


async def exchange(port: int, certs_dir: Path, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection and return everything until the server closes."""
    stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
    try:
        await stream.send_all(raw)
        return await read_until_close(stream)
    finally:
        await trio.aclose_forcefully(stream)


#: case -> (raw request, the rejection reason counted by the listener)
SMUGGLING = {
    "cl_and_te": (b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "ambiguous_framing"),
    "obs_fold": (b"GET /echo HTTP/1.1\r\nhost: localhost\r\nx-a: one\r\n two\r\n\r\n", "obs_fold"),
    "bad_chunk_size": (b"POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "bad_body_framing"),
    "conflicting_lengths": (b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!", "malformed_request"),
    "space_before_colon": (b"GET /echo HTTP/1.1\r\nhost: localhost\r\nx-a : 1\r\n\r\n", "malformed_request"),
    "no_host": (b"GET /echo HTTP/1.1\r\n\r\n", "malformed_request"),
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
async def test_smuggling_attempts_get_400_and_never_reach_the_backend(certs_dir: Path, case: str) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        # the smuggled request rides behind the bad one: it must not be served either
        raw, reason = SMUGGLING[case]
        reply = await exchange(port, certs_dir, raw + b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 "), reply
        assert reply.count(b"HTTP/1.1") == 1
        assert b"connection: close" in reply.lower()
        assert f'alt-svc: h3=":{port}"; ma=86400'.encode() in reply
        assert backend.requests == []
        assert server.bootstrap_listeners[0].stats[f"h1_rejected.{reason}"] == 1
        # other clients are unaffected
        async with httpx.AsyncClient(verify=client_context(certs_dir)) as client:
            assert (await client.get(f"https://localhost:{port}/health")).status_code == 200


CONNECT_ALLOWED = """
resilience:
  protocol:
    allow_connect: true
"""


@pytest.mark.parametrize("target", [b"127.0.0.1:443", b"/p"], ids=["authority-form", "origin-form"])
@pytest.mark.parametrize("extra", ["", CONNECT_ALLOWED], ids=["connect-off", "connect-on"])
async def test_connect_gets_501_and_the_connection_closes(certs_dir: Path, target: bytes, extra: str) -> None:
    """fuzz_h1_request: h11 switches protocols on a 2xx answer to CONNECT. The ingress refuses
    CONNECT itself (501, connection: close), whatever the policy says, so neither an answer
    nor the bytes behind the request (tunnel data, a pipelined request) are read as HTTP."""
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir, extra=extra)) as server:
        port = server.bootstrap_listeners[0].port
        raw = b"CONNECT " + target + b" HTTP/1.1\r\nhost: 127.0.0.1:443\r\n\r\n" + b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n"
        reply = await exchange(port, certs_dir, raw)
        assert reply.startswith(b"HTTP/1.1 501 ") and b"connect_not_supported" in reply, reply
        assert reply.endswith(b"(connect_not_supported)\n") and b"connection: close" in reply.lower()  # one response
        assert backend.requests == []
        assert server.bootstrap_listeners[0].stats["h1_rejected.connect_not_supported"] == 1


async def test_bad_chunk_mid_body_aborts_with_400(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        raw = b"POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\n"
        reply = await exchange(port, certs_dir, raw)
        assert reply.startswith(b"HTTP/1.1 400 ") and b"bad_body_framing" in reply
        assert all(r["body_len"] is None for r in backend.requests)  # the backend never got a whole body


async def test_slowloris_gets_408_and_others_are_served(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        listener = server.bootstrap_listeners[0]
        listener.limits.header_timeout = 0.5
        port = listener.port
        slow = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        silent = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        try:
            await slow.send_all(b"GET /echo HTTP/1.1\r\nhost: local")
            start = trio.current_time()
            async with httpx.AsyncClient(verify=client_context(certs_dir)) as client:
                assert (await client.get(f"https://localhost:{port}/health")).status_code == 200
            await slow.send_all(b"host\r\nx-a: 1\r\n")  # trickling bytes does not extend the deadline
            reply = await read_until_close(slow)
            assert reply.startswith(b"HTTP/1.1 408 ") and b"header_timeout" in reply
            assert trio.current_time() - start < 3
            assert (await read_until_close(silent)).startswith(b"HTTP/1.1 408 ")  # no byte at all
        finally:
            await trio.aclose_forcefully(slow)
            await trio.aclose_forcefully(silent)
        assert [r["path"] for r in backend.requests] == ["/health"]


HEADER_LIMITS = """
resilience:
  protocol:
    max_headers_count: 20
    max_headers_bytes: 2048
"""


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_header_limits_get_431(certs_dir: Path, http2: bool) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir, extra=HEADER_LIMITS)) as server:
        port = server.bootstrap_listeners[0].port
        async with httpx.AsyncClient(http2=http2, http1=not http2, verify=client_context(certs_dir)) as client:
            many = {f"x-h{i}": "v" for i in range(30)}
            r = await client.get(f"https://localhost:{port}/echo", headers=many)
            assert r.status_code == 431 and b"too_many_headers" in r.content
            assert "alt-svc" in r.headers
            r = await client.get(f"https://localhost:{port}/echo", headers={"x-big": "v" * 3000})
            assert r.status_code == 431 and b"headers_too_large" in r.content
            r = await client.get(f"https://localhost:{port}/echo", headers={f"x-h{i}": "v" for i in range(5)})
            assert r.status_code == 200
        assert len(backend.requests) == 1


async def test_keepalive_request_limit_and_idle_timeout(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        listener = server.bootstrap_listeners[0]
        listener.limits.max_requests_per_connection = 3
        stream = await tls_connect(listener.port, client_context(certs_dir, alpn=["http/1.1"]))
        try:
            heads = []
            rest = b""
            for _ in range(3):
                await stream.send_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
                head, rest = await read_response_head(stream)
                heads.append(head.lower())
                if len(rest) < 2:
                    rest += await stream.receive_some(100)
            assert [status_of(h) for h in heads] == [200, 200, 200]
            assert b"connection: close" not in heads[0] and b"connection: close" in heads[2]
            assert await read_until_close(stream) == b""
        finally:
            await trio.aclose_forcefully(stream)
        listener.limits.keepalive_timeout = 0.3
        stream = await tls_connect(listener.port, client_context(certs_dir, alpn=["http/1.1"]))
        try:
            await stream.send_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            head, rest = await read_response_head(stream)
            assert status_of(head) == 200 and b"connection: close" not in head.lower()
            # idle past keepalive_timeout: closed without a 408
            assert (rest + await read_until_close(stream)) == b"ok"
        finally:
            await trio.aclose_forcefully(stream)


async def test_drain_closes_idle_and_answers_in_flight_with_connection_close(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        idle = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        busy = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        try:
            await idle.send_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            head, _ = await read_response_head(idle)
            assert status_of(head) == 200
            await busy.send_all(b"GET /slow/300 HTTP/1.1\r\nhost: localhost\r\n\r\n")
            await backend.wait_for_requests(2)
            server.request_drain()
            assert await read_until_close(idle) in (b"", b"ok")
            reply = await read_until_close(busy)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"connection: close" in reply.lower() and reply.endswith(b"slow ok")
        finally:
            await trio.aclose_forcefully(idle)
            await trio.aclose_forcefully(busy)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert json.dumps(dict(server.bootstrap_listeners[0].stats))  # counters stay plain data
