"""Upstream failure types. ``proxy.errors`` maps each to a client-facing status."""

from __future__ import annotations


class UpstreamError(Exception):
    """Base class: the exchange with the backend failed."""

    #: short machine-readable cause, used in logs, metrics and error bodies
    reason: str = "upstream_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UpstreamConnectError(UpstreamError):
    """TCP connect failed (refused, unreachable, DNS) or timed out. Nothing was sent."""

    reason = "connect_failed"


class UpstreamTLSError(UpstreamConnectError):
    """The TLS handshake with the backend failed (verification, ALPN, protocol). Nothing was sent."""

    reason = "tls_failed"


class UpstreamTimeout(UpstreamError):
    """The backend did not send response headers within the response timeout."""

    reason = "response_timeout"


class UpstreamProtocolError(UpstreamError):
    """The backend broke the protocol, closed early or reset the stream."""

    reason = "protocol_error"
