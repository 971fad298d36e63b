"""Client-side tools: the HTTP/3 test/operator client, a small HTTP/1.1 + HTTP/2 TLS client,
and the ``spooky-trio request`` command built on them."""

from spooky_trio.clients.errors import (
    ClientError,
    H3ClientError,
    H3ConnectError,
    H3ConnectionLost,
    H3StreamReset,
    TcpClientError,
)

__all__ = [
    "ClientError",
    "H3ClientError",
    "H3ConnectError",
    "H3ConnectionLost",
    "H3StreamReset",
    "TcpClientError",
]
