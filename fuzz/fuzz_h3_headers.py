"""Fuzz HTTP/3 request header validation and conversion to a DownstreamRequest.

Input: a header list as QPACK would decode it (arbitrary name/value bytes, biased towards
real pseudo-headers and connection-specific fields). It goes through what the server does
with a HEADERS frame: aioquic's ``validate_request_headers`` (run by H3Connection, whose
MessageError ``StreamScopedH3Connection`` turns into a stream reset), then the one
request-head validator (``http/validate.py``: ``split_pseudo``, ``check_head``) and the same
steps ``QuicConnectionTask._start_request`` takes (``ingress/multiplexed.py``: header limits,
``refusal``, then ``build_request``: client-cert header scrub, cookie join, Host lookup).

Invariants: only aioquic ``MessageError`` escapes; the validator answers (a 400) or accepts.
For an accepted request: every regular header name is lowercase and not a pseudo-header,
non-CONNECT requests have ``:scheme`` (``https``) and an origin-form or ``*`` ``:path``,
``:protocol`` only comes with CONNECT, no value holds a control character, and the request
as the proxy would forward it is accepted by h11's HTTP/1.1 serializer (what an upstream
refuses never gets past the validator: issue 24, finding 1).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fdp import Reader
from _runner import instrumented, run

with instrumented(__name__):
    import h11
    from aioquic.h3.connection import MessageError, validate_request_headers

    from spooky_trio.http.errors import ErrorResponse
    from spooky_trio.http.headers import build_upstream_headers
    from spooky_trio.http.validate import split_pseudo
    from spooky_trio.ingress.multiplexed import build_request, refusal
    from spooky_trio.ingress.tls import CLIENT_CERT_HEADER


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
    except MessageError:
        return
    head = split_pseudo(raw)
    if isinstance(head, ErrorResponse):
        assert head.status == 400
        return
    assert head.headers == [(n, v) for n, v in raw if not n.startswith(b":")]
    # what QuicConnectionTask._start_request does (ingress/multiplexed.py)
    error = refusal(head, max_count=128, max_bytes=16384, websocket=False)
    if error is not None:
        assert error.status in (400, 431, 501) and error.reason
        return
    if head.method != b"CONNECT":
        assert head.scheme == b"https" and head.path is not None and (head.path[:1] == b"/" or head.path == b"*")
        assert head.protocol is None
    request = build_request(head, None, protocol="HTTP/3", client_address=("192.0.2.1", 443), subject=None)
    assert request.content_length == stream.expected_content_length
    host_header = request.host_header
    for name, value in request.headers:
        assert name == name.lower() and name[:1] != b":", name
        assert name != CLIENT_CERT_HEADER
        assert not any(c < 0x20 and c != 0x09 or c == 0x7F for c in value), (name, value)
    assert sum(1 for n, _ in request.headers if n == b"cookie") <= 1
    if request.method == b"CONNECT" or head.protocol is not None:
        return
    # what the forward step would send to an HTTP/1.1 backend: h11 must accept it
    upstream = build_upstream_headers(request.headers, forwarded_mode="overwrite", client_ip="192.0.2.1",
                                      scheme=b"https", client_authority=request.authority or host_header or b"example.com")
    upstream = [(n, v) for n, v in upstream if n != b"content-length"]
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=request.method, target=request.path,
                          headers=[(b"host", request.authority or host_header or b"example.com"), *upstream]))


if __name__ == "__main__":
    run(test_one_input)
