"""Fuzz HTTP/3 request header validation and conversion to a DownstreamRequest.

Input: a header list as QPACK would decode it (arbitrary name/value bytes, biased towards
real pseudo-headers and connection-specific fields). It goes through what the server does
with a HEADERS frame: aioquic's ``validate_request_headers`` (run by H3Connection, whose
MessageError ``StreamScopedH3Connection`` turns into a stream reset), then
``parse_request_head`` and the same steps ``QuicConnectionTask._start_request`` takes
(client-cert header scrub, header limits, Host lookup, ``DownstreamRequest``).

Invariants: only aioquic ``MessageError`` escapes. For an accepted request: every regular
header name is lowercase and not a pseudo-header, every pseudo-header key starts with ``:``
and is one of the known five, non-CONNECT requests have ``:scheme`` and ``:path``,
``:protocol`` only comes with CONNECT, no value holds CR, LF or NUL, and the regular
headers keep their order.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    from aioquic.h3.connection import MessageError, validate_request_headers
    from spooky_trio.http.messages import DownstreamRequest
    from spooky_trio.ingress.h3 import parse_request_head
    from spooky_trio.ingress.tls import CLIENT_CERT_HEADER, client_headers
    from spooky_trio.http.errors import header_limit_error


NAMES = [
    b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b":Method",
    b"host", b"content-length", b"te", b"connection", b"transfer-encoding", b"upgrade",
    b"keep-alive", b"proxy-connection", b"cookie", b"x-forwarded-for", CLIENT_CERT_HEADER,
    b"Host", b"x-a", b"",
]
VALUES = [b"GET", b"CONNECT", b"POST", b"https", b"http", b"/", b"/a?b=c", b"example.com",
          b"example.com:443", b"trailers", b"0", b"12", b"-1", b"websocket", b"", b" x", b"a\r\nb"]
KNOWN_PSEUDO = {b":method", b":scheme", b":authority", b":path", b":protocol"}


class _Stream:
    expected_content_length: int | None = None


def read_headers(r: Reader) -> list[tuple[bytes, bytes]]:
    headers = []
    for _ in range(r.int_in_range(0, 24)):
        name = r.pick(NAMES) if r.boolean() else r.bytes_(40)
        value = r.pick(VALUES) if r.boolean() else r.bytes_(80)
        headers.append((name, value))
    return headers


def test_one_input(data: bytes) -> None:
    raw = read_headers(Reader(data))
    stream = _Stream()
    try:
        validate_request_headers(raw, stream)  # what H3Connection does before HeadersReceived
        pseudo, headers = parse_request_head(raw)
    except MessageError:
        return
    assert set(pseudo) <= KNOWN_PSEUDO, pseudo
    if pseudo.get(b":method") != b"CONNECT":
        assert b":scheme" in pseudo and b":path" in pseudo
        assert b":protocol" not in pseudo
    assert headers == [(n, v) for n, v in raw if not n.startswith(b":")]
    # the steps of QuicConnectionTask._start_request / _rejection
    header_limit_error(headers, max_count=128, max_bytes=16384)
    headers = client_headers(headers, None)
    host_header = next((v for n, v in headers if n == b"host"), None)
    request = DownstreamRequest(
        method=pseudo.get(b":method", b""),
        scheme=pseudo.get(b":scheme", b"https"),
        authority=pseudo.get(b":authority", b""),
        path=pseudo.get(b":path", b""),
        headers=headers,
        protocol="HTTP/3",
        client_address=("192.0.2.1", 443),
        content_length=stream.expected_content_length,
        host_header=host_header,
    )
    for name, value in request.headers:
        assert name == name.lower() and name[:1] != b":", name
        assert name != CLIENT_CERT_HEADER
        assert not any(c in value for c in b"\r\n\x00"), (name, value)
    for value in (request.method, request.scheme, request.authority, request.path):
        assert not any(c in value for c in b"\r\n\x00"), value
    assert request.content_length is None or request.content_length >= 0


if __name__ == "__main__":
    run(test_one_input)
