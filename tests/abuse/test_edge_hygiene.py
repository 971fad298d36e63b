"""Edge hygiene (issue 24): every finding of the attacker's review, reproduced with
unvalidating HTTP/2 and HTTP/3 clients (and raw HTTP/1.1) against a backend that records
the exact bytes it receives. Each test failed on main before the one request-head validator
(http/validate.py), path normalization (http/paths.py) and the framing fixes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio
from aioquic.h3.connection import ErrorCode, FrameType, encode_frame

from spooky_trio.clients.errors import H3StreamReset
from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.abuse.helpers import GET, abuse_proxy, headers_frame, raw_exchange, static_block
from tests.abuse.support_hygiene import (
    StreamResult,
    h2_fields,
    h2_probe,
    recording_backend,
)
from tests.support.backends import run_backend
from tests.support.bootstrap import (
    client_context,
    read_until_close,
    status_of,
    tls_connect,
)
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

POLICY = """
resilience:
  protocol:
    denied_path_prefixes: ["/admin"]
"""


def h3(server: Server, certs_dir: Path) -> H3Client:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))  # type: ignore[return-value]


async def h3_raw(client: H3Client, fields: list[tuple[bytes, bytes]]) -> tuple[int | None, bytes]:
    """(status, body) of a raw HTTP/3 request, or (None, b"") when the stream was reset."""
    try:
        async with client.stream_raw(fields) as resp:
            body = b""
            while chunk := await resp.receive(1 << 20):
                body += chunk
            return resp.status, body
    except H3StreamReset:
        return None, b""


async def h1_raw(server: Server, certs_dir: Path, head: bytes) -> bytes:
    stream = await tls_connect(server.bootstrap_listeners[0].port, client_context(certs_dir, alpn=["http/1.1"]))
    await stream.send_all(head)
    return await read_until_close(stream)


MALFORMED = {
    "field name not a token": h2_fields(b"/", extra=[(b"x(y", b"1")]),
    "control character in a value": h2_fields(b"/", extra=[(b"x-a", b"a\x0bb")]),
    "method not a token": h2_fields(b"/", method=b"G ET"),
    "space in the path": h2_fields(b"/a b"),
    "DEL in a value": h2_fields(b"/", extra=[(b"x-a", b"a\x7fb")]),
    "SOH in a value": h2_fields(b"/", extra=[(b"x-a", b"\x01")]),
}


async def test_malformed_heads_never_reach_or_eject_a_backend(certs_dir: Path) -> None:
    """Finding 1 (denial of service): heads the HTTP/1.1 serializer refuses used to be
    answered 502 and counted as backend failures, ejecting the pool's backends."""
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            for _ in range(3):
                for fields in MALFORMED.values():
                    result = await h2c.result(await h2c.request(fields))
                    assert result.status == 400 or result.reset is not None, (fields, result)
                    status, body = await h3_raw(h3c, fields)
                    assert status in (400, None), (fields, status, body)
            assert h2c.goaway is None  # stream errors only: the connection lives on
            assert backend.heads == []  # nothing reached the backend
            ok = await h2c.result(await h2c.request(h2_fields(b"/")))
            assert ok.status == 200 and ok.body == b"ok"
            assert (await h3c.request("GET", "/", authority="localhost")).status == 200
        state = server.generation.backends()[0].state
        assert state.available(trio.current_time()) and sum(state.failures.values()) == 0
        assert server.metrics.registry.get_sample_value("spooky_request_validation_rejects_total") >= 2 * 3 * 4


@pytest.mark.parametrize("scheme", [b"http", b"https://evil.test/?"])
async def test_the_scheme_reported_upstream_is_the_transports(certs_dir: Path, scheme: bytes) -> None:
    """Finding 2: ``:scheme`` steered X-Forwarded-Proto; a client's Forwarded went through."""
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            refused = await h2c.result(await h2c.request(h2_fields(b"/", scheme=scheme)))
            assert refused.status == 400 and b"scheme_mismatch" in refused.body
            status, body = await h3_raw(h3c, h2_fields(b"/", scheme=scheme))
            assert status == 400 and b"scheme_mismatch" in body
            spoof = [(b"x-forwarded-proto", b"http"), (b"forwarded", b"proto=http;for=10.0.0.1")]
            assert (await h2c.result(await h2c.request(h2_fields(b"/", extra=spoof)))).status == 200
            status, _ = await h3_raw(h3c, h2_fields(b"/", extra=spoof))
            assert status == 200
    assert len(backend.heads) == 2
    for index in (0, 1):
        assert backend.header_values(index, b"x-forwarded-proto") == [b"https"]
        assert backend.header_values(index, b"forwarded") == []


BYPASSES = [b"//admin/x", b"/./admin/x", b"/x/../admin/x", b"/%61dmin/x", b"/%2e%2e/admin/x", b"/ok/..//admin"]


async def test_path_rules_see_the_normalized_path_on_every_protocol(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 3: ``denied_path_prefixes`` ran on the raw path; absolute-form :path caused
    host confusion upstream."""
    caplog.set_level(logging.INFO, logger="spooky.access")
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=POLICY)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            for path in BYPASSES:
                result = await h2c.result(await h2c.request(h2_fields(path)))
                assert result.status == 403, (path, result)
                assert (await h3_raw(h3c, h2_fields(path)))[0] == 403, path
                raw = await h1_raw(server, certs_dir, b"GET " + path + b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                assert status_of(raw) == 403, (path, raw[:80])
            for fields in (h2_fields(b"http://b.test/admin/x"), h2_fields(b"https://localhost/ok")):
                assert (await h2c.result(await h2c.request(fields))).status == 400
                assert (await h3_raw(h3c, fields))[0] == 400
            # HTTP/1.1 absolute-form: turned into origin-form, normalized, checked
            absolute = b"GET https://localhost/x/../admin/x HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n"
            assert status_of(await h1_raw(server, certs_dir, absolute)) == 403
            plain = b"GET http://localhost/ok HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
            assert status_of(await h1_raw(server, certs_dir, plain)) == 400
            # what is allowed goes upstream normalized, with its query as sent
            assert (await h2c.result(await h2c.request(h2_fields(b"/ok/./a//b/%7Ec?q=/../x")))).status == 200
    assert backend.heads and all(b"admin" not in head.split(b"\r\n")[0] for head in backend.heads)
    assert backend.target(0) == b"/ok/a/b/~c?q=/../x"
    logged = [r.access["path"] for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]
    assert "/ok/./a//b/%7Ec?q=/../x" in logged  # the log shows what the client sent


async def test_the_clients_path_is_forwarded_when_configured(certs_dir: Path) -> None:
    extra = POLICY + "    forward_normalized_path: false\n    escaped_slashes: reject\n"
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        async with h2_probe(server, certs_dir) as h2c:
            assert (await h2c.result(await h2c.request(h2_fields(b"//ok/./x")))).status == 200
            assert (await h2c.result(await h2c.request(h2_fields(b"/.//admin")))).status == 403
            rejected = await h2c.result(await h2c.request(h2_fields(b"/a%2Fb")))
            assert rejected.status == 400 and b"escaped_slash" in rejected.body
    assert [backend.target(i) for i in range(len(backend.heads))] == [b"//ok/./x"]


DOUBLE_FRAMED = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
CONFLICTING = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"


async def test_responses_framed_twice_lose_the_stale_length(certs_dir: Path) -> None:
    """Finding 4: CL + TE chunked kept the stale CL (HTTP/2 got content-length 0 with a body,
    aioquic dropped the whole QUIC connection); conflicting lengths answer 502."""
    answers = {b"/double": DOUBLE_FRAMED, b"/conflict": CONFLICTING}
    async with recording_backend(answers) as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            double = await h2c.result(await h2c.request(h2_fields(b"/double")))
            assert double.status == 200 and double.body == b"hello"
            assert b"content-length" not in dict(double.headers)
            r = await h3c.request("GET", "/double", authority="localhost")
            assert r.status == 200 and r.body == b"hello" and b"content-length" not in dict(r.headers)
            assert (await h3c.request("GET", "/", authority="localhost")).status == 200  # the QUIC connection lives
            raw = await h1_raw(server, certs_dir, b"GET /double HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            assert status_of(raw) == 200 and raw.endswith(b"hello") or b"\r\n5\r\nhello\r\n" in raw
            assert b"content-length: 0" not in raw.lower()
            assert (await h2c.result(await h2c.request(h2_fields(b"/conflict")))).status == 502
            assert (await h3c.request("GET", "/conflict", authority="localhost")).status == 502
            raw = await h1_raw(server, certs_dir, b"GET /conflict HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            assert status_of(raw) == 502
    assert backend.heads


async def test_cookie_crumbs_reach_an_http1_backend_as_one_field(certs_dir: Path) -> None:
    """Finding 5: HTTP/3 cookie crumbs reached the backend as two Cookie lines."""
    crumbs = [(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2")]
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            assert (await h3_raw(h3c, h2_fields(b"/", extra=crumbs)))[0] == 200
            assert (await h2c.result(await h2c.request(h2_fields(b"/", extra=crumbs)))).status == 200
    for index in (0, 1):
        assert backend.header_values(index, b"cookie") == [b"a=1; b=2"]


async def test_a_malformed_http2_request_is_a_stream_error(certs_dir: Path) -> None:
    """Finding 6: one malformed request closed the HTTP/2 connection with GOAWAY, taking its
    siblings with it. Finding 7: ``host`` without ``:authority`` is routed."""
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c:
            sibling = await h2c.request(h2_fields(b"/slow/300"))
            bad = [
                await h2c.request(h2_fields(b"/", extra=[(b"content-length", b"abc")]), body=b"x"),
                await h2c.request(h2_fields(b"/", extra=[(b"Upper", b"1")])),
                await h2c.request(h2_fields(b"/", extra=[(b"connection", b"close")])),
                await h2c.request([(b":path", b"/"), (b":method", b"GET")]),  # no :scheme, order
                await h2c.request(h2_fields(b"/", extra=[(b":authority", b"twice")])),
            ]
            for stream_id in bad:
                result = await h2c.result(stream_id)
                assert result.status == 400 or result.reset is not None, (stream_id, result)
            done = await h2c.result(sibling)
            assert done.status == 200 and done.body == b"slow ok" and h2c.goaway is None
            hosted = await h2c.result(await h2c.request(h2_fields(b"/echo", authority=None, extra=[(b"host", b"localhost")])))
            assert hosted.status == 200 and json.loads(hosted.body)["headers"]
        def protocol_errors(reason: str) -> float | None:
            return server.metrics.registry.get_sample_value("spooky_protocol_errors_total", {"protocol": "h2", "reason": reason})
        assert protocol_errors("protocol_error") == 0 and (protocol_errors("malformed_request") or 0) >= 1


async def test_obs_text_is_forwarded_and_malformed_trailers_reset(certs_dir: Path) -> None:
    """Finding 8: octets over 0x7f are opaque data (RFC 9110 5.5, forwarded as sent);
    request trailers are not forwarded, malformed ones reset the stream."""
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with h2_probe(server, certs_dir) as h2c:
            assert (await h2c.result(await h2c.request(h2_fields(b"/", extra=[(b"x-name", b"caf\xc3\xa9")])))).status == 200
            # POSTs whose trailers carry a pseudo-header or a control character: each of
            # these streams is reset, nothing else
            for trailers in ([(b":status", b"200")], [(b"x-t", b"a\x0bb")]):
                sid = h2c.h2.get_next_available_stream_id()
                h2c.streams[sid] = StreamResult()
                h2c.h2.send_headers(sid, h2_fields(b"/", method=b"POST"), end_stream=False)
                h2c.h2.send_data(sid, b"body", end_stream=False)
                h2c.h2.send_headers(sid, trailers, end_stream=True)
                await h2c.flush()
                result = await h2c.result(sid)
                assert result.reset is not None and result.status is None and h2c.goaway is None
            assert (await h2c.result(await h2c.request(h2_fields(b"/")))).status == 200
    assert backend.header_values(0, b"x-name") == [b"caf\xc3\xa9"]


async def test_http3_request_trailers_end_the_body_and_malformed_ones_reset(certs_dir: Path) -> None:
    """The same trailer rule over HTTP/3 (ingress/multiplexed.py check_trailers): aioquic
    lets a control character through in a trailer value; the stream is reset with
    H3_MESSAGE_ERROR, counted, and the connection goes on."""
    post = [(b":method", b"POST"), *GET[1:3], (b":path", b"/")]
    async with recording_backend() as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3(server, certs_dir) as client:
            body = encode_frame(FrameType.DATA, b"body")
            fine = await raw_exchange(client, headers_frame(static_block(post)) + body + headers_frame(static_block([(b"x-t", b"1")])))
            assert fine.status == 200
            bad = await raw_exchange(client, headers_frame(static_block(post)) + body + headers_frame(static_block([(b"x-t", b"a\x0bb")])))
            assert bad.reset_code == ErrorCode.H3_MESSAGE_ERROR
            assert (await raw_exchange(client, headers_frame(static_block(GET)))).status == 200
        assert await metrics.value("spooky_protocol_errors_total", protocol="h3", reason="malformed_request") == 1
    assert backend.header_values(0, b"x-t") == [] and backend.target(0) == b"/"


async def test_a_local_answer_to_head_has_no_body(certs_dir: Path) -> None:
    """RFC 9110 9.3.2: the proxy's own answers (here a 404 and a policy 403) to HEAD carry
    the length a GET would get and no body, on every protocol; the connection goes on."""
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=POLICY)) as server:
        async with h2_probe(server, certs_dir) as h2c, h3(server, certs_dir) as h3c:
            for path in (b"/admin/x", b"/ok"):
                head = await h2c.result(await h2c.request(h2_fields(path, method=b"HEAD")))
                get = await h2c.result(await h2c.request(h2_fields(path)))
                assert head.status == get.status and head.body == b"" and head.reset is None
                assert dict(head.headers)[b"content-length"] == str(len(get.body)).encode()
                status, body = await h3_raw(h3c, h2_fields(path, method=b"HEAD"))
                assert (status, body) == (get.status, b"")
            assert (await h3c.request("GET", "/ok", authority="localhost")).status == 200
            raw = await h1_raw(server, certs_dir, b"HEAD /admin/x HTTP/1.1\r\nhost: localhost\r\n\r\n"
                                                  b"GET /ok HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            assert status_of(raw) == 403 and raw.count(b"HTTP/1.1 ") == 2 and raw.endswith(b"ok")


async def test_a_clients_connection_list_strips_its_own_fields_only(certs_dir: Path) -> None:
    """RFC 9110 7.6.1 is honoured where the request enters: the fields an HTTP/1.1 client
    names in Connection never reach the backend, but it cannot name away a field the proxy
    sets (here X-Forwarded-For; claims and trace context are added the same way)."""
    async with recording_backend() as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        raw = await h1_raw(server, certs_dir, b"GET /ok HTTP/1.1\r\nhost: localhost\r\nconnection: close, x-secret, x-forwarded-for\r\n"
                                              b"x-secret: 1\r\nx-forwarded-for: 10.9.9.9\r\n\r\n")
        assert status_of(raw) == 200
    assert backend.header_values(0, b"x-secret") == [] and backend.header_values(0, b"connection") == []
    assert backend.header_values(0, b"x-forwarded-for") == [b"127.0.0.1"]
