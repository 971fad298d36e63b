"""Exceptions raised by the clients in :mod:`spooky_trio.clients`.

The HTTP/3 ones are the transport's (:mod:`spooky_trio.upstream.h3_errors`: the upstream
pool drives the same transport), re-exported here under their usual names. Every message is
a single human-readable line, so ``spooky-trio request`` can print ``str(exc)`` as its
error output without a traceback.
"""

from __future__ import annotations

from spooky_trio.upstream.h3_errors import (
    ClientError,
    H3ClientError,
    H3ConnectError,
    H3ConnectionLost,
    H3StreamReset,
    H3TLSError,
)

__all__ = ["ClientError", "H3ClientError", "H3ConnectError", "H3ConnectionLost", "H3StreamReset", "H3TLSError", "TcpClientError"]


class TcpClientError(ClientError):
    """The HTTP/1.1 or HTTP/2 (TLS over TCP) client failed: connect, TLS, ALPN or protocol."""
