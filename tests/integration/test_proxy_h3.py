"""Through the real proxy: aioquic HTTP/3 client -> spooky-trio -> real hypercorn backends."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import trio
import trustme

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import pattern_bytes, run_backend
from tests.support.proxy import h1_pool, h2_pool, proxy_yaml, running_proxy

MiB = 1024 * 1024
H3_MESSAGE_ERROR = 0x10E


def client(server, certs_dir: Path) -> H3Client:  # type: ignore[no-untyped-def]
    listener = server.listeners[0]
    return H3Client.connect("127.0.0.1", listener.port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


# multi-MiB bodies through aioquic are CPU bound: on a loaded 2-core machine a 5 MiB upload
# can take longer than the default 2 s wait for response headers (the echo backends answer
# after reading the whole body), so these tests give the backend ample time
BIG_LIMITS = """
performance:
  max_request_body_bytes: 20000000
  backend_timeout_ms: 60000
  backend_body_idle_timeout_ms: 60000
  backend_body_total_timeout_ms: 60000
  backend_total_request_timeout_ms: 120000
"""


async def test_get_and_post_to_http1_backend(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with client(server, certs_dir) as c:
            r = await c.request("GET", "/echo?x=1", authority="localhost")
            assert r.status == 200
            info = json.loads(r.body)
            assert info["backend"] == "h1" and info["method"] == "GET" and info["path"] == "/echo"
            r = await c.request("POST", "/echo", body=b"hello body", authority="localhost")
            info = json.loads(r.body)
            assert info["method"] == "POST" and info["body_len"] == 10
            assert info["body_sha256"] == hashlib.sha256(b"hello body").hexdigest()


async def test_http2_tls_backend_with_private_ca(certs_dir: Path) -> None:
    async with run_backend(name="h2", tls=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        async with running_proxy(proxy_yaml(h2_pool(backend.port, certs_dir), certs_dir=certs_dir)) as server:
            async with client(server, certs_dir) as c:
                r = await c.request("POST", "/echo", body=b"x" * 1000, authority="localhost")
                assert r.status == 200
                info = json.loads(r.body)
                assert info["backend"] == "h2" and info["http_version"] == "2" and info["body_len"] == 1000
                r = await c.request("GET", "/trailers", authority="localhost")
                assert r.status == 200
                assert (b"grpc-status", b"0") in r.trailers


async def test_five_mib_both_ways_byte_exact_and_chunked(certs_dir: Path) -> None:
    payload = pattern_bytes(5 * MiB)
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=BIG_LIMITS)) as server:
        async with client(server, certs_dir) as c:
            r = await c.request("POST", "/echo?raw=1", body=payload, authority="localhost")
            assert r.status == 200 and r.body == payload
            r = await c.request("GET", f"/bytes/{5 * MiB}", authority="localhost")
            assert r.status == 200 and r.body == payload
            r = await c.request("GET", f"/chunked/{3 * MiB}", authority="localhost")
            assert r.status == 200 and r.body == pattern_bytes(3 * MiB)
            assert r.header("content-length") is None


async def test_many_concurrent_streams_on_one_connection(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with client(server, certs_dir) as c:
            results: dict[int, int] = {}

            async def one(i: int) -> None:
                r = await c.request("GET", f"/echo?i={i}", authority="localhost")
                results[i] = r.status
                assert json.loads(r.body)["query"] == f"i={i}"

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(one, i)
            assert results == {i: 200 for i in range(60)}


async def test_error_statuses(certs_dir: Path) -> None:
    dead_port = trio.socket.socket()
    await dead_port.bind(("127.0.0.1", 0))
    closed = dead_port.getsockname()[1]
    dead_port.close()  # nothing listens there now: connection refused
    async with run_backend(name="h1") as backend:
        upstream = h1_pool(backend.url, "/ok", "ok") + h1_pool(f"http://127.0.0.1:{closed}", "/down", "down")
        extra = """
performance:
  backend_connect_timeout_ms: 300
  backend_timeout_ms: 300
  backend_body_idle_timeout_ms: 300
  max_request_body_bytes: 1000
"""
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server:
            async with client(server, certs_dir) as c:
                r = await c.request("GET", "/nowhere", authority="localhost")
                assert r.status == 404 and b"no_route" in r.body
                r = await c.request("GET", "/down/x", authority="localhost")
                assert r.status == 502 and b"connect" in r.body
                r = await c.request("GET", "/ok/slow/2000", authority="localhost")
                assert r.status == 504
                r = await c.request("POST", "/ok/echo", body=b"x" * 5000, authority="localhost")
                assert r.status == 413

                async def streamed():  # no content-length: caught while streaming
                    for _ in range(5):
                        yield b"y" * 500

                r = await c.request("POST", "/ok/echo", body=streamed(), authority="localhost")
                assert r.status == 413
                # the connection still serves after all of that
                r = await c.request("GET", "/ok/echo", authority="localhost")
                assert r.status == 200


async def test_tls_verification_failure_is_502_and_logged(certs_dir: Path, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wrong = ca.issue_cert("other.example")
    wrong.private_key_pem.write_to_path(str(tmp_path / "wrong.key"))
    wrong.cert_chain_pems[0].write_to_path(str(tmp_path / "wrong.pem"))
    caplog.set_level(logging.WARNING, logger="spooky.proxy")
    async with run_backend(name="wrong", tls=True, certfile=tmp_path / "wrong.pem", keyfile=tmp_path / "wrong.key") as backend:
        async with running_proxy(proxy_yaml(h2_pool(backend.port, certs_dir), certs_dir=certs_dir)) as server:
            async with client(server, certs_dir) as c:
                r = await c.request("GET", "/echo", authority="localhost")
    assert r.status == 502
    assert backend.requests == []
    lines = [rec.getMessage() for rec in caplog.records if "api/api-1" in rec.getMessage()]
    assert lines and "tls" in lines[0].lower() and ("mismatch" in lines[0].lower() or "match" in lines[0].lower())


MALFORMED = {
    "missing_path": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost")],
    "uppercase_name": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/echo"), (b"X-Upper", b"1")],
    "pseudo_after_regular": [(b":method", b"GET"), (b":scheme", b"https"), (b"accept", b"*/*"), (b":authority", b"localhost"), (b":path", b"/echo")],
    "connection_specific": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/echo"), (b"connection", b"keep-alive")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_request_resets_only_its_stream(case: str, certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with client(server, certs_dir) as c, client(server, certs_dir) as other:
            bad = await c.send_raw_headers(MALFORMED[case])
            assert bad.status is None and bad.reset_code == H3_MESSAGE_ERROR
            # same connection, other streams: still served
            assert (await c.request("GET", "/echo", authority="localhost")).status == 200
            assert (await other.request("GET", "/echo", authority="localhost")).status == 200
    assert all(req["path"] == "/echo" for req in backend.requests)
    assert len(backend.requests) == 2


async def test_content_length_disagreeing_with_body_is_rejected(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with client(server, certs_dir) as c:
            head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/echo"), (b"content-length", b"10")]
            bad = await c.send_raw_headers(head, body=b"only5")
            assert bad.status is None and bad.reset_code == H3_MESSAGE_ERROR
            assert (await c.request("GET", "/echo", authority="localhost")).status == 200
    # the short body never completed a request at the backend
    assert [r for r in backend.requests if r["method"] == "POST" and r["body_len"] == 5] == []


async def test_header_policies(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend:
        pools = f"""
    pt:
      route:
        path_prefix: "/pt"
      forwarded_headers:
        mode: append
      backends:
        - id: "a"
          address: "{backend.url}"
    rw:
      route:
        path_prefix: "/rw"
      host_policy:
        mode: rewrite
        host: "internal.example"
      backends:
        - id: "b"
          address: "{backend.url}"
    up:
      route:
        path_prefix: "/up"
      host_policy:
        mode: upstream
      forwarded_headers:
        mode: preserve
      backends:
        - id: "c"
          address: "{backend.url}"
    """
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with client(server, certs_dir) as c:
                hdrs = [("x-forwarded-for", "203.0.113.9"), ("te", "trailers"), ("proxy-authorization", "secret"), ("x-client-cert-subject", "CN=forged")]

                async def seen(path: str) -> dict[str, str]:
                    r = await c.request("GET", path, headers=hdrs, authority="front.example:443")
                    assert r.status == 200
                    return {k.lower(): v for k, v in json.loads(r.body)["headers"]}

                h = await seen("/pt/headers")
                assert h["host"] == "front.example:443"
                assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
                assert h["x-forwarded-proto"] == "https" and h["x-forwarded-host"] == "front.example:443"
                assert "proxy-authorization" not in h
                assert "x-client-cert-subject" not in h  # only a verified TLS client cert may set it
                h = await seen("/rw/headers")
                assert h["host"] == "internal.example"
                assert h["x-forwarded-for"] == "127.0.0.1"
                h = await seen("/up/headers")
                assert h["host"] == f"127.0.0.1:{backend.port}"
                assert h["x-forwarded-for"] == "203.0.113.9"


async def test_authority_host_mismatch_rejected(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with client(server, certs_dir) as c:
            r = await c.request("GET", "/echo", headers=[("host", "evil.example")], authority="localhost")
            assert r.status == 400 and b"authority_host_mismatch" in r.body
            r = await c.request("GET", "/echo", headers=[("host", "localhost:443")], authority="localhost")
            assert r.status == 200
    assert len(backend.requests) == 1


async def test_five_mib_both_ways_through_http2_backend(certs_dir: Path) -> None:
    payload = pattern_bytes(5 * MiB)
    async with run_backend(name="h2", tls=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        yaml = proxy_yaml(h2_pool(backend.port, certs_dir), certs_dir=certs_dir, extra=BIG_LIMITS)
        async with running_proxy(yaml) as server:
            async with client(server, certs_dir) as c:
                r = await c.request("POST", "/echo?raw=1", body=payload, authority="localhost")
                assert r.status == 200 and r.body == payload
                r = await c.request("GET", f"/chunked/{5 * MiB}", authority="localhost")
                assert r.status == 200 and r.body == payload
    assert {req["http_version"] for req in backend.requests} == {"2"}


async def test_header_limits_and_extended_connect_answered_without_backend(certs_dir: Path) -> None:
    extra = "resilience:\n  protocol:\n    max_headers_count: 10\n    max_headers_bytes: 600\n"
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        async with client(server, certs_dir) as c:
            many = [(f"x-h{i}", "v") for i in range(12)]
            r = await c.request("GET", "/echo", headers=many, authority="localhost")
            assert r.status == 431 and b"too_many_headers" in r.body
            r = await c.request("GET", "/echo", headers=[("x-big", "v" * 700)], authority="localhost")
            assert r.status == 431 and b"headers_too_large" in r.body
            ws = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/chat")]
            r = await c.send_raw_headers(ws, end_stream=False)
            assert r.status == 501 and b"RFC 9220" in r.body
            assert (await c.request("GET", "/echo", headers=many[:5], authority="localhost")).status == 200
    assert len(backend.requests) == 1


async def test_quic_timers_close_an_idle_connection_after_requests_moved_them(certs_dir: Path) -> None:
    """The connection task's timer (quic_connection.py, re-armed after every transmit): after
    a few requests moved aioquic's timer back and forth (ACK delay, loss detection, idle
    deadline), a silent client is closed at the idle timeout and the server-side connection
    task ends."""
    extra = "performance:\n  quic_max_idle_timeout_ms: 600\n"
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        listener = server.listeners[0]
        async with client(server, certs_dir) as c:
            for _ in range(5):
                assert (await c.request("GET", "/echo", authority="localhost")).status == 200
            (conn,) = listener.connections
            assert not conn.closed.is_set()
            with trio.fail_after(10):  # the idle timeout is 0.6 s (at least 3 PTOs in aioquic)
                await conn.closed.wait()
        assert listener.connections == set()
