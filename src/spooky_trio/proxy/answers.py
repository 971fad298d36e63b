"""The one place that maps failures to client-facing HTTP statuses, and writes error answers."""

from __future__ import annotations

import trio

from spooky_trio.http.errors import ErrorResponse, ProxyError, unwrap
from spooky_trio.http.messages import Headers, RequestBodyError, RequestBodyTimeout, RequestBodyTooLarge, ResponseSink
from spooky_trio.upstream.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)


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
