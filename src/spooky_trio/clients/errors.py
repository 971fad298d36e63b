"""Exceptions raised by the clients in :mod:`spooky_trio.clients`.

Every message is a single human-readable line, so ``spooky-trio request`` can print
``str(exc)`` as its error output without a traceback.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error raised by the clients in this package."""


class H3ClientError(ClientError):
    """Base class of the HTTP/3 client's errors."""


class H3ConnectError(H3ClientError):
    """The QUIC connection could not be established (resolution, refusal, timeout, TLS/ALPN).

    It is also the base of :class:`H3ConnectionLost`, so a caller that only cares whether
    the server could be talked to needs a single ``except``.
    """


class H3ConnectionLost(H3ConnectError):
    """An established connection was closed (CONNECTION_CLOSE, idle timeout, ICMP error,
    local close) or refuses new requests after a GOAWAY; pending operations fail with it."""


class H3StreamReset(H3ClientError):
    """The server reset a request stream (RESET_STREAM) instead of completing the response."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the server with error code 0x{code:x}")
        self.stream_id = stream_id
        self.code = code


class TcpClientError(ClientError):
    """The HTTP/1.1 or HTTP/2 (TLS over TCP) client failed: connect, TLS, ALPN or protocol."""
