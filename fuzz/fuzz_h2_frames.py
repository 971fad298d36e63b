"""Fuzz the HTTP/2 ingress frame path: frames -> h2 server connection (configured exactly
as ``H2ServerConnection`` configures it) -> ``H2ServerConnection._on_event`` /
``_start_stream`` (``ingress/multiplexed.py``: ``refusal``, ``build_request``) -> DownstreamRequest.

Input: after the client preface, a sequence of frames built from the data (HEADERS with an
HPACK-encoded header list biased towards pseudo-headers, extended CONNECT and framing
fields; CONTINUATION, DATA, RST_STREAM, SETTINGS, WINDOW_UPDATE, PRIORITY, PING, GOAWAY)
or raw bytes. Stream tasks are not run: a stand-in nursery records them.

Invariants: only ``h2.exceptions.ProtocolError`` escapes ``receive_data`` (a connection
error: the real reader logs it and closes; a malformed request head is a stream error, see
ingress/h2_engine.py), and nothing escapes ``_on_event``. Every stream has a
DownstreamRequest, and either an ErrorResponse (400/431/501; then the request is the
bodiless, headerless record the access log shows) or an accepted request. An accepted
request has lowercase, non-pseudo header names, no control characters in any header value,
method, authority or path, a non-negative ``content_length`` matching its header, ``GET`` +
``upgrade: websocket`` and no body for an extended CONNECT, ``host_header`` only next to an
``:authority``, and as the proxy would forward it passes h11's HTTP/1.1 serializer.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fdp import Reader
from _runner import instrumented, run

with instrumented(__name__):
    import h2.exceptions
    import h11
    import hpack

    from spooky_trio.http.headers import build_upstream_headers
    from spooky_trio.ingress.bootstrap import BootstrapLimits, ServeContext
    from spooky_trio.ingress.h2 import H2ServerConnection


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_LIMITS = BootstrapLimits(max_headers_count=32, max_headers_bytes=2048, h2_stream_window=65535, h2_connection_window=65535)
NAMES = [b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b"host", b"content-length",
         b"te", b"connection", b"transfer-encoding", b"upgrade", b"cookie", b"x-client-cert-subject", b"Host", b"x-a"]
VALUES = [b"GET", b"POST", b"CONNECT", b"https", b"/", b"/p?q=1", b"example.com", b"example.com:8443", b"websocket",
          b"chat", b"trailers", b"0", b"5", b"x5", b"", b" a", b"a\nb"]
STREAM_IDS = [0, 1, 3, 5, 2, 7]


class _Nursery:
    def __init__(self) -> None:
        self.started: list[object] = []

    def start_soon(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.started.append(args)


def _raw(frame_type: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame serialized by hand, so invalid stream IDs and payloads are possible."""
    return len(payload).to_bytes(3, "big") + bytes([frame_type, flags]) + sid.to_bytes(4, "big") + payload


def _frame(r: Reader, encoder: hpack.Encoder) -> bytes:
    kind = r.int_in_range(0, 10)
    sid = r.pick(STREAM_IDS)
    if kind <= 2:  # HEADERS (most useful)
        headers = []
        for _ in range(r.int_in_range(0, 12)):
            name = r.pick(NAMES) if r.boolean() else r.bytes_(20)
            value = r.pick(VALUES) if r.boolean() else r.bytes_(40)
            headers.append((name, value))
        block = encoder.encode(headers)
        flags = (0x4 if r.byte() % 4 else 0) | (0x1 if r.boolean() else 0)
        return _raw(0x1, flags, sid, block)
    if kind == 3:  # CONTINUATION
        return _raw(0x9, 0x4 if r.boolean() else 0, sid, r.bytes_(40))
    if kind == 4:  # DATA
        return _raw(0x0, 0x1 if r.boolean() else 0, sid, r.bytes_())
    if kind == 5:  # RST_STREAM
        return _raw(0x3, 0, sid, r.byte().to_bytes(4, "big"))
    if kind == 6:  # SETTINGS
        return _raw(0x4, 0, 0, r.int_in_range(1, 8).to_bytes(2, "big") + (r.byte() * 257).to_bytes(4, "big"))
    if kind == 7:  # WINDOW_UPDATE
        return _raw(0x8, 0, sid, (r.byte() * 1000).to_bytes(4, "big"))
    if kind == 8:  # PRIORITY
        return _raw(0x2, 0, sid, r.pick(STREAM_IDS).to_bytes(4, "big") + bytes([r.byte()]))
    if kind == 9:  # PING or GOAWAY
        return _raw(0x6, 0, 0, r.bytes_(8).ljust(8, b"\0")) if r.boolean() else _raw(0x7, 0, 0, bytes(8))
    return r.bytes_(64)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    ctx = ServeContext(handler=None, activity=None, limits=_LIMITS, stats=Counter())  # type: ignore[arg-type]
    conn = H2ServerConnection(ctx, None, ("198.51.100.9", 50000), None)  # type: ignore[arg-type]
    conn._nursery = _Nursery()  # type: ignore[assignment]
    conn.h2.initiate_connection()
    conn.h2.data_to_send()
    encoder = hpack.Encoder()
    wire = bytearray(PREFACE + _raw(0x4, 0, 0, b""))
    for _ in range(r.int_in_range(1, 12)):
        wire += _frame(r, encoder)
    if r.boolean():
        wire += r.rest()
    chunk = r.int_in_range(1, 255) if r.remaining() else len(wire)
    for start in range(0, len(wire), max(chunk, 1)):
        try:
            events = conn.h2.receive_data(bytes(wire[start : start + chunk]))
        except h2.exceptions.ProtocolError:
            conn.h2.data_to_send()
            break
        for event in events:
            if not conn._on_event(event):
                break
        conn.h2.data_to_send()
    for stream in conn.streams.values():
        _check_stream(stream)


def _check_stream(stream) -> None:  # type: ignore[no-untyped-def]
    request = stream.request
    assert request is not None
    if stream.error is not None:
        assert stream.error.status in (400, 431, 501), stream.error
        assert request.headers == [] and request.body is None
        return
    for name, value in request.headers:
        assert name == name.lower() and name and name[:1] != b":", name
        assert not any(c < 0x20 and c != 0x09 or c == 0x7F for c in value), (name, value)
    for value in (request.method, request.authority, request.path, request.scheme, request.host_header or b""):
        assert not any(c < 0x20 or c == 0x7F for c in value), value
    declared = [v for n, v in request.headers if n == b"content-length"]
    if declared:
        assert request.content_length == int(declared[0]) >= 0
    if (b"upgrade", b"websocket") in request.headers and request.method == b"GET" and request.body is None:
        pass  # extended CONNECT rewritten for the pipeline
    if request.host_header is not None:
        assert request.authority
    if request.method == b"CONNECT":
        return
    # what the forward step would send to an HTTP/1.1 backend: h11 must accept it
    authority = request.authority or b"example.com"
    upstream = build_upstream_headers(request.headers, forwarded_mode="overwrite", client_ip="198.51.100.9",
                                      scheme=b"https", client_authority=authority)
    h11.Connection(h11.CLIENT).send(h11.Request(
        method=request.method, target=request.path,
        headers=[(b"host", authority), *((n, v) for n, v in upstream if n != b"content-length")]))


if __name__ == "__main__":
    run(test_one_input)
