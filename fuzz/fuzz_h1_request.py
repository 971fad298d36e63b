"""Fuzz the bootstrap HTTP/1.1 request path: raw bytes -> h11 server connection ->
``H1ServerConnection._check_obs_fold`` / ``_build`` -> DownstreamRequest.

The harness drives the same steps ``H1ServerConnection._read_head`` / ``_serve`` /
``next_body_chunk`` take, without sockets: the obs-fold check, ``h11.next_event`` (a
``RemoteProtocolError`` becomes the 400/413/414/431/501 rejection ``_read_head`` makes),
``_build`` (the connection is constructed with no stream; ``_build`` never touches it), the
body events, a minimal response and ``start_next_cycle`` for pipelined requests.

Invariants: only ``_Reject`` (status 400/408/413/414/431/501; a CONNECT is always 501, since
h11 would switch protocols on the 204 answered here) escapes a head, and body
framing errors are ``h11.RemoteProtocolError`` (what ``next_body_chunk`` maps to
``RequestBodyError``). Every DownstreamRequest has a non-empty method, header names that
are lowercase, no CR/LF/NUL in any header value, method, authority or path, never both
Content-Length and Transfer-Encoding, a non-negative ``content_length`` that matches the
header, no client-sent ``x-client-cert-subject``, a body object exactly when the
request declares one, an origin-form or ``*`` target, and as the proxy would forward it the
request passes h11's client-side serializer (issue 24: the one validator lets nothing
through that an HTTP/1.1 backend connection would refuse).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run

with instrumented(__name__):
    import h11

    from spooky_trio.http.headers import build_upstream_headers
    from spooky_trio.ingress.bootstrap import BootstrapLimits, ServeContext
    from spooky_trio.ingress.h1 import H1ServerConnection, _Reject
    from spooky_trio.ingress.tls import CLIENT_CERT_HEADER


_LIMITS = BootstrapLimits(max_headers_count=32, max_headers_bytes=2048)
_BAD = (b"\r", b"\n", b"\x00")


def _clean(value: bytes) -> bool:
    return not any(c in value for c in _BAD)


def _reject_status(exc: h11.RemoteProtocolError) -> int:
    # H1ServerConnection._read_head's mapping
    return exc.error_status_hint if exc.error_status_hint in (400, 413, 414, 431, 501) else 400


def test_one_input(data: bytes) -> None:
    ctx = ServeContext(handler=None, activity=None, limits=_LIMITS, stats=Counter())  # type: ignore[arg-type]
    conn = H1ServerConnection(ctx, None, ("198.51.100.7", 40000), None)  # type: ignore[arg-type]
    conn.h11.receive_data(data)
    conn.h11.receive_data(b"")  # then the client closes
    for _ in range(8):  # pipelined requests
        try:
            conn._check_obs_fold()
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reject(_reject_status(exc), "malformed_request", str(exc)) from None
            if not isinstance(event, h11.Request):
                return  # NEED_DATA or ConnectionClosed
            request, body = conn._build(event)
        except _Reject as rej:
            assert rej.status in (400, 408, 413, 414, 431, 501), rej.status
            return
        _check_request(request, body)
        # the body, as next_body_chunk reads it
        try:
            while True:
                event = conn.h11.next_event()
                if isinstance(event, h11.Data):
                    continue
                if isinstance(event, h11.EndOfMessage):
                    break
                return  # NEED_DATA / ConnectionClosed: "request body interrupted"
        except h11.RemoteProtocolError:
            return  # bad_body_framing
        if body is None:
            assert event == h11.EndOfMessage()
        conn.h11.send(h11.Response(status_code=204, headers=[]))
        conn.h11.send(h11.EndOfMessage())
        if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
            return
        conn.h11.start_next_cycle()


def _check_request(request, body) -> None:  # type: ignore[no-untyped-def]
    assert request.method and request.method != b"CONNECT", request
    assert request.protocol in ("HTTP/1.1", "HTTP/1.0")
    names = [n for n, _ in request.headers]
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    assert CLIENT_CERT_HEADER not in names
    for name, value in request.headers:
        assert name == name.lower() and name and name[:1] != b":", name
        assert _clean(value), (name, value)
    for value in (request.method, request.authority, request.path, request.host_header or b""):
        assert _clean(value), value
    declared = [v for n, v in request.headers if n == b"content-length"]
    if declared:
        assert request.content_length == int(declared[0]) and request.content_length >= 0
    else:
        assert request.content_length is None
    chunked = b"transfer-encoding" in names
    assert (body is not None) == (chunked or (request.content_length or 0) > 0)
    assert request.body is body
    assert request.path[:1] == b"/" or request.path == b"*", request.path
    authority = request.authority or b"example.com"
    upstream = build_upstream_headers(request.headers, forwarded_mode="append", client_ip="198.51.100.9",
                                      scheme=b"https", client_authority=authority)
    h11.Connection(h11.CLIENT).send(h11.Request(
        method=request.method, target=request.path,
        headers=[(b"host", authority), *((n, v) for n, v in upstream if n not in (b"content-length", b"transfer-encoding"))]))


if __name__ == "__main__":
    run(test_one_input)
