"""The per-request halves of the HTTP/1.1 ingress (``ingress/h1.py``): the request body it
pulls on demand, the response sink, the sink of an answer given before a request could be
served, and the raw tunnel after a 101.

They hold the connection and call back into it (``send``, ``next_body_chunk``,
``close_after_response``), as ``h2_stream.py`` does for HTTP/2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11
import trio

from spooky_trio.http.errors import reason_phrase
from spooky_trio.http.messages import Headers

if TYPE_CHECKING:
    from spooky_trio.ingress.h1 import H1ServerConnection

RECEIVE_SIZE = 64 * 1024


def raw_response(status: int, headers: Headers, body: bytes) -> bytes:
    """A complete ``connection: close`` response serialized by hand (h11 may be in ERROR);
    ``content-length`` is set from ``body`` (one in ``headers`` is dropped)."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}".encode("ascii")]
    lines += [n + b": " + v for n, v in headers if n != b"content-length"]
    lines += [b"content-length: " + str(len(body)).encode("ascii"), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class ClosingAnswerSink:
    """The sink of an answer given before a request could be served (a malformed or slow
    head): the whole response is written in one piece with ``connection: close``, by hand,
    because h11 may be in its ERROR state."""

    def __init__(self, conn: H1ServerConnection) -> None:
        self._conn = conn
        self._head: tuple[int, Headers] | None = None
        self.headers_sent = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._head = (status, self._conn.ctx.response_headers(headers))
        self.headers_sent = True
        if end_stream:
            await self.send_data(b"", end_stream=True)

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        assert self._head is not None and end_stream, "an answer is one head and one body"
        status, headers = self._head
        async with self._conn._send_lock:
            await self._conn.stream.send_all(raw_response(status, headers, data))

    async def send_trailers(self, trailers: Headers) -> None:
        raise AssertionError("an answer has no trailers")

    def reset(self, reason: str) -> None:
        """Nothing to reset: the connection closes after the answer."""


class H1RequestBody:
    """The request body: pulls from the connection only when ``receive`` is called."""

    def __init__(self, conn: H1ServerConnection) -> None:
        self._conn = conn
        self._first: bytes | None = None
        self.ended = False

    async def prefetch(self) -> None:
        """Read the first chunk before the request is forwarded (framing errors surface here)."""
        self._first = await self.receive()

    async def receive(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        if self.ended:
            return b""
        chunk = await self._conn.next_body_chunk()
        if not chunk:
            self.ended = True
        return chunk


class H1ResponseSink:
    """Writes one response on the connection; ``send_all`` is the backpressure."""

    def __init__(self, conn: H1ServerConnection, method: bytes) -> None:
        self._conn = conn
        self._method = method
        self._chunked = False
        self.headers_sent = False
        self.finished = False
        self.aborted = False
        self.tunnelled = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        conn = self._conn
        out = conn.ctx.response_headers(headers)
        has_length = any(n == b"content-length" for n, _ in out)
        if end_stream and not has_length and self._method != b"HEAD" and status not in (204, 304):
            out.append((b"content-length", b"0"))
            has_length = True
        if conn.close_after_response():
            out.append((b"connection", b"close"))
        self._chunked = not has_length and (conn.h11.their_http_version or b"1.0") >= b"1.1"
        await conn.send(h11.Response(status_code=status, headers=out, reason=reason_phrase(status, "").encode()))
        self.headers_sent = True
        if end_stream:
            await conn.send(h11.EndOfMessage())
            self.finished = True

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        if data:
            await self._conn.send(h11.Data(data=data))
        if end_stream:
            await self._conn.send(h11.EndOfMessage())
            self.finished = True

    async def send_trailers(self, trailers: Headers) -> None:
        # trailers exist only in chunked framing; with a content-length they are dropped
        await self._conn.send(h11.EndOfMessage(headers=trailers if self._chunked else []))
        self.finished = True

    def reset(self, reason: str) -> None:
        self.aborted = True

    async def open_tunnel(self, headers: Headers) -> H1Tunnel:
        """Answer 101 Switching Protocols with ``headers`` and hand over the raw stream."""
        conn = self._conn
        await conn.send(h11.InformationalResponse(status_code=101, headers=conn.ctx.response_headers(headers)))
        self.headers_sent = self.finished = self.tunnelled = True
        leftover, _closed = conn.h11.trailing_data
        return H1Tunnel(conn.stream, leftover)


class H1Tunnel:
    """The client side of a relay after 101: raw bytes on the TLS stream."""

    supports_half_close = False

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], leftover: bytes) -> None:
        self._stream = stream
        self._leftover = leftover

    async def receive_some(self) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            return bytes(await self._stream.receive_some(RECEIVE_SIZE))  # (trio streams hand out bytes: no copy)
        except trio.BrokenResourceError:
            return b""

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        """TLS over TCP cannot half-close; the relay closes the whole connection instead."""
