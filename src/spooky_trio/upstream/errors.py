"""Upstream failure types and what they say about the backend.

``proxy/answers.py`` maps each type to a client-facing status; :func:`failure_reason` maps
it to the health failure reason that passive health, the circuit breaker and the metrics
count against the backend.
"""

from __future__ import annotations

import trio


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


class UnforwardableRequest(Exception):
    """The request cannot be written to the backend: h11's serializer refused its head (h2
    does not validate what it sends). The request's fault, never the backend's: it is not
    an :class:`UpstreamError`, so it counts against no backend's health or breaker and is
    not retried elsewhere; the client gets 400. The head validator (``http/validate.py``)
    keeps this from happening; this is the last line of defence."""

    reason = "unforwardable_request"


def failure_reason(exc: BaseException) -> str | None:
    """The health failure reason ``exc`` stands for, or None when it says nothing about the
    backend (the client's body failed, the client went away, a local limit)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, UpstreamTLSError):
        return "tls"
    if isinstance(exc, UpstreamTimeout) or isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, UpstreamError):
        return "timeout" if exc.reason == "body_timeout" else "transport"
    return None


def status_failure_reason(status: int) -> str | None:
    """``5xx`` for a server error status, else None (the backend answered)."""
    return "5xx" if 500 <= status <= 599 else None
