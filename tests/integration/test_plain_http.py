"""Plain ``http://`` sent to the TLS port (ingress/plaintext.py): a 400 with a hint, logged
and counted through the answer door, instead of an empty reply; TLS on the same port is
untouched (HTTP/1.1 and HTTP/2 over TLS, and HTTP/3 beside it, keep serving)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from tests.integration.test_answer_door import access_records, counted
from tests.support.backends import run_backend
from tests.support.bootstrap import read_until_close, status_of
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

REASON = "plain_http_to_tls_port"


async def raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_until_close(stream)


async def test_plain_http_to_the_tls_port_gets_400_with_a_hint(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    ca = str(certs_dir / "ca.pem")
    async with run_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        port = server.listeners[0].port
        raw = await raw_exchange(port, f"GET /x?y=1 HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: t\r\n\r\n".encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert status_of(raw) == 400
        assert b"connection: close" in head.lower() and b"alt-svc" not in head.lower()
        assert b"content-type: text/plain" in head.lower()
        assert body.decode() == (f"400 Bad Request: this port speaks HTTPS (TLS), the request was plain HTTP: "
                                 f"use https://localhost:{port}/ ({REASON})\n")
        # what a client does with an http:// URL
        async with httpx.AsyncClient() as plain:
            answer = await plain.post(f"http://127.0.0.1:{port}/upload", content=b"some body")
        assert answer.status_code == 400 and f"use https://127.0.0.1:{port}/" in answer.text
        # a head that is not even HTTP, and a Host not worth repeating: answered all the same
        odd = await raw_exchange(port, b"HELLO THERE\r\n\r\n")
        assert status_of(odd) == 400 and b"use https:// for this port" in odd
        junk = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: <script>\r\n\r\n")
        assert status_of(junk) == 400 and b"<script>" not in junk
        # TLS on the same port: HTTP/1.1, HTTP/2 and HTTP/3 beside it are untouched
        verify = ssl.create_default_context(cafile=ca)
        async with httpx.AsyncClient(verify=verify) as h1, httpx.AsyncClient(http2=True, http1=False, verify=verify) as h2:
            assert (await h1.get(f"https://localhost:{port}/echo")).status_code == 200
            assert (await h2.get(f"https://localhost:{port}/echo")).http_version == "HTTP/2"
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as client:
            assert (await client.request("GET", "/echo", authority="localhost")).status == 200
        tls_failures = sum(n for key, n in server.bootstrap_listeners[0].tls.stats.items() if key.startswith("handshake_failed"))
    assert tls_failures == 0  # a plaintext request is not a failed TLS handshake
    assert counted(server, REASON, "4xx") == 4
    lines = [line for line in access_records(caplog) if line["reason"] == REASON]
    assert len(lines) == 4 and all(line["status"] == 400 and line["outcome"] == "error" for line in lines)
    first = lines[0]
    assert first["method"] == "GET" and first["path"] == "/x?y=1" and first["protocol"] == "HTTP/1.1"
    assert [line["method"] for line in lines[1:]] == ["POST", "", "GET"]


async def test_a_plaintext_client_that_stalls_is_cut_at_the_header_timeout(certs_dir: Path) -> None:
    extra = "resilience:\n  protocol:\n    max_headers_bytes: 1024\n"
    async with running_proxy(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=extra)) as server:
        port = server.listeners[0].port
        server.bootstrap_listeners[0].limits.header_timeout = 0.3
        # an endless head is bounded by max_headers_bytes, a stalled one by the header timeout
        endless = await raw_exchange(port, b"GET / HTTP/1.1\r\n" + b"x-filler: " + b"a" * 20000 + b"\r\n")
        assert status_of(endless) == 400
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
            with trio.fail_after(5):
                assert status_of(await read_until_close(stream)) == 400
