"""Exceptions of the HTTP/3 transport (:mod:`spooky_trio.upstream.h3_transport`), shared by
the operator's client (:mod:`spooky_trio.clients`, which re-exports them) and the upstream
HTTP/3 pool (:mod:`spooky_trio.upstream.h3`, which maps them to
:mod:`spooky_trio.upstream.errors` at its boundary).

They live here, at the layer of the transport that raises them, because the client sits
above the upstream layer; :class:`ClientError` is also the base of the TCP client's errors.
Every message is a single human-readable line, so ``spooky-trio request`` can print
``str(exc)`` as its error output without a traceback.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error raised by the clients in :mod:`spooky_trio.clients`."""


class H3ClientError(ClientError):
    """Base class of the HTTP/3 client's errors."""


class H3ConnectError(H3ClientError):
    """The QUIC connection could not be established (resolution, refusal, timeout, TLS/ALPN).

    It is also the base of :class:`H3ConnectionLost`, so a caller that only cares whether
    the server could be talked to needs a single ``except``.
    """


class H3TLSError(H3ConnectError):
    """The QUIC handshake failed on TLS: the certificate did not verify, the identity did
    not match, or no common ALPN protocol (a CRYPTO_ERROR close, RFC 9001 4.8)."""


class H3ConnectionLost(H3ConnectError):
    """An established connection was closed (CONNECTION_CLOSE, idle timeout, ICMP error,
    unanswered probes, local close) or refuses new requests after a GOAWAY; pending
    operations fail with it."""


class H3StreamReset(H3ClientError):
    """The server reset a request stream (RESET_STREAM) instead of completing the response."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the server with error code 0x{code:x}")
        self.stream_id = stream_id
        self.code = code
