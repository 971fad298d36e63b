"""Error answers the proxy makes itself: their shape (:class:`ErrorResponse`) and the
exceptions that carry one up to the answer door (``proxy/answers.py``).

Bottom layer: imports nothing from the project but :mod:`spooky_trio.http.messages`.
"""

from __future__ import annotations

import http
from collections.abc import Sequence

import attrs


@attrs.frozen
class ErrorResponse:
    """A short plain-text error answer: status, machine-readable reason, human message."""

    status: int
    reason: str
    message: str

    def body(self) -> bytes:
        """``<status> <phrase>: <message> (<reason>)``, one line of UTF-8 text."""
        return f"{self.status} {reason_phrase(self.status)}: {self.message} ({self.reason})\n".encode()


#: RFC 9110 renamed these; Python 3.11's http.HTTPStatus has the RFC 7231 phrases
_RFC9110_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def reason_phrase(status: int, unknown: str = "Error") -> str:
    """The RFC 9110 reason phrase of ``status`` (``unknown`` for an unregistered code)."""
    phrase = _RFC9110_PHRASES.get(status)
    if phrase is not None:
        return phrase
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return unknown


class ProxyError(Exception):
    """Raised by a filter (or anything below it) to answer the client with
    :attr:`response`, plus ``headers`` (e.g. ``Retry-After``), through the answer door."""

    def __init__(self, status: int, reason: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.response = ErrorResponse(status, reason, message)
        self.headers = list(headers)


class ShedError(ProxyError):
    """Overload protection refused the request: 503 with ``Retry-After`` and the reason
    (``brownout``, ``adaptive_admission``, ``global_inflight``, ``upstream_inflight``,
    ``backend_inflight``, ``route_queue``, ``circuit_open``) named in the body."""

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(503, reason, message, [(b"retry-after", str(retry_after).encode())])
        self.retry_after = retry_after


class ResponseTooLarge(Exception):
    """The backend's body passed ``max_response_body_bytes`` after the head was sent: the
    only honest answer left is a stream reset (``response_body_too_large``)."""

    reason = "response_body_too_large"


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
