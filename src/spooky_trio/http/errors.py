"""Error answers the proxy makes itself: their shape (:class:`ErrorResponse`) and the
exceptions that carry one up to the answer door (``proxy/answers.py``).

Bottom layer: imports nothing from the project but :mod:`spooky_trio.http.messages`.
"""

from __future__ import annotations

import attrs

_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    425: "Too Early",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@attrs.frozen
class ErrorResponse:
    """A short plain-text error answer: status, machine-readable reason, human message."""

    status: int
    reason: str
    message: str

    def body(self) -> bytes:
        phrase = _PHRASES.get(self.status, "Error")
        return f"{self.status} {phrase}: {self.message} ({self.reason})\n".encode()


class ProxyError(Exception):
    """Raised inside the pipeline to answer the client with an error response."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.response = ErrorResponse(status, reason, message)


class ShedError(ProxyError):
    """Overload protection refused the request: 503 with ``Retry-After`` and the reason
    (``brownout``, ``adaptive_admission``, ``global_inflight``, ``upstream_inflight``,
    ``backend_inflight``, ``route_queue``, ``circuit_open``) named in the body."""

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(503, reason, message)
        self.retry_after = retry_after


def header_limit_error(headers: list[tuple[bytes, bytes]], *, max_count: int, max_bytes: int) -> ErrorResponse | None:
    """431 when a request head passes ``resilience.protocol.max_headers_count`` or
    ``max_headers_bytes`` (sum of names and values); None when it is within both."""
    if len(headers) > max_count:
        return ErrorResponse(431, "too_many_headers", f"more than {max_count} header fields")
    if sum(len(n) + len(v) for n, v in headers) > max_bytes:
        return ErrorResponse(431, "headers_too_large", f"header fields exceed {max_bytes} bytes")
    return None


def unwrap(exc: BaseException) -> BaseException:
    """The single leaf of nested exception groups (Trio nurseries wrap errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
