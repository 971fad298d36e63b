"""Plain HTTP sent to the TLS port (``curl http://host:9889/``): a short 400 with a hint, as
nginx ("The plain HTTP request was sent to HTTPS port") and Caddy answer, instead of a
connection that closes without a word.

A TLS connection opens with a handshake record, whose first byte is a content type (0x16;
SSLv2-style hellos 0x80 and up); an HTTP/1.x request opens with its method, ASCII letters.
The bootstrap listener peeks at the first byte before the handshake (``MSG_PEEK`` leaves it
for the TLS layer; one ``recv`` per connection, not per request). A letter: the request head
is read (bounded by ``max_headers_bytes`` and ``header_timeout``), answered ``400`` with
reason ``plain_http_to_tls_port`` through the answer door (access log and
``spooky_requests_by_reason_total``, like every answer) and the connection closes.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

import h11
import trio

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.messages import DownstreamRequest, Headers
from spooky_trio.ingress.h1 import LINGER_SECONDS
from spooky_trio.ingress.h1_stream import RECEIVE_SIZE, raw_response

if TYPE_CHECKING:
    from spooky_trio.ingress.bootstrap import ServeContext

REASON = "plain_http_to_tls_port"
#: a Host worth repeating in the hint: a DNS name or IP literal, an optional port
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


async def starts_with_plain_http(tcp: trio.SocketStream) -> bool:
    """True when the connection's first byte is an ASCII letter (an HTTP method), which no
    TLS record starts with. Waits for that byte; the caller bounds the wait."""
    try:
        first = await tcp.socket.recv(1, socket.MSG_PEEK)
    except OSError:
        return False  # reset: the handshake reports it as before
    return first.isalpha()


class _PlainAnswerSink:
    """Writes the one answer on the plain TCP stream, ``connection: close``."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self._tcp = tcp
        self._head: tuple[int, Headers] | None = None
        self.headers_sent = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._head, self.headers_sent = (status, list(headers)), True
        if end_stream:
            await self.send_data(b"", end_stream=True)

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        assert self._head is not None and end_stream, "an answer is one head and one body"
        await self._tcp.send_all(raw_response(*self._head, data))

    async def send_trailers(self, trailers: Headers) -> None:
        raise AssertionError("an answer has no trailers")

    def reset(self, reason: str) -> None:
        """Nothing to reset: the connection closes after the answer."""


async def answer_plain_http(tcp: trio.SocketStream, ctx: ServeContext, client_address: tuple[str, int]) -> None:
    """Read the plaintext request head, answer 400 through ``ctx.reject``, close."""
    limits = ctx.limits
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_headers_bytes + 8192)
    event: h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA] = h11.NEED_DATA
    with trio.move_on_after(limits.header_timeout):
        try:
            while event is h11.NEED_DATA:
                parser.receive_data(bytes(await tcp.receive_some(RECEIVE_SIZE)))
                event = parser.next_event()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # answered all the same, with what is known of the request
    method = target = host = b""
    if isinstance(event, h11.Request):
        method, target = bytes(event.method), bytes(event.target)
        host = next((bytes(v) for n, v in event.headers if n == b"host"), b"")
    hint = f"use https://{host.decode('ascii')}/" if _AUTHORITY.fullmatch(host) else "use https:// for this port"
    request = DownstreamRequest(method=method, scheme=b"http", authority=host, path=target, headers=[],
                                protocol="HTTP/1.1", client_address=client_address)
    error = ErrorResponse(400, REASON, f"this port speaks HTTPS (TLS), the request was plain HTTP: {hint}")
    try:
        await ctx.reject(request, _PlainAnswerSink(tcp), error)
        # the client may still be sending: shut our side down and read for a moment, so our
        # close does not turn into a reset that destroys the answer in flight
        with trio.move_on_after(LINGER_SECONDS):
            tcp.socket.shutdown(socket.SHUT_WR)
            while await tcp.receive_some(RECEIVE_SIZE):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(tcp)
