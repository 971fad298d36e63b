"""Upstream side of the proxy: pooled HTTP/1.1 (h11) and HTTP/2-over-TLS (h2) clients on Trio.

Public API: :class:`UpstreamPool` (``run()`` in a nursery, then ``exchange()`` per request),
:class:`BackendTarget`, :class:`UpstreamResponse`, :func:`make_client_ssl_context` and the
error types of :mod:`spooky_trio.upstream.errors`.
"""

from spooky_trio.upstream.common import BackendTarget, UpstreamResponse
from spooky_trio.upstream.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from spooky_trio.upstream.pool import UpstreamPool
from spooky_trio.upstream.tls import make_client_ssl_context

__all__ = [
    "BackendTarget",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTLSError",
    "UpstreamTimeout",
    "make_client_ssl_context",
]
