"""The one place that maps failures to client-facing HTTP statuses."""

from __future__ import annotations

import attrs
import trio

from spooky_trio.http.messages import Headers, RequestBodyError, RequestBodyTimeout, RequestBodyTooLarge, ResponseSink
from spooky_trio.upstream.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)

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


def error_response_for(exc: BaseException) -> ErrorResponse | None:
    """The error response for a failure, or None when the only answer is a stream reset."""
    exc = unwrap(exc)
    if isinstance(exc, ProxyError):
        return exc.response
    if isinstance(exc, UpstreamTLSError):
        return ErrorResponse(502, exc.reason, "TLS handshake with the backend failed")
    if isinstance(exc, UpstreamConnectError):
        return ErrorResponse(502, exc.reason, "could not connect to the backend")
    if isinstance(exc, UpstreamTimeout):
        return ErrorResponse(504, exc.reason, "the backend did not answer in time")
    if isinstance(exc, UpstreamProtocolError):
        return ErrorResponse(502, exc.reason, "the backend broke the HTTP exchange")
    if isinstance(exc, UpstreamError):
        return ErrorResponse(502, exc.reason, "the backend exchange failed")
    if isinstance(exc, trio.TooSlowError):
        return ErrorResponse(504, "total_timeout", "the request exceeded the total time allowed")
    if isinstance(exc, RequestBodyTooLarge):
        return ErrorResponse(413, "request_body_too_large", str(exc))
    if isinstance(exc, RequestBodyTimeout):
        return ErrorResponse(408, "client_body_timeout", str(exc))
    if isinstance(exc, RequestBodyError):
        return None
    return None


async def send_error(sink: ResponseSink, error: ErrorResponse, extra_headers: Headers = ()) -> None:  # type: ignore[assignment]
    body = error.body()
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await sink.send_headers(error.status, headers)
    await sink.send_data(body, end_stream=True)
