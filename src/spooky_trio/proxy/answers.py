"""The answer door: every response the proxy makes itself, and the record step of every request.

Three functions, one per way a request can end, all used by the chain
(:class:`~spooky_trio.proxy.chain.Proxy`) and by nothing else:

* :meth:`AnswerDoor.answer`: a local answer (:class:`Answer`): a filter's refusal (405, 403,
  404, 413, 503 shed...), an ingress-level rejection (400, 408, 431, 501), a backend failure
  mapped to 502/504. It writes the head (through the response hooks of the filters that
  ran) and the body, and sets the status and ``reason`` the record shows.
* :meth:`AnswerDoor.fail`: an exception ended the request: :func:`error_response_for` maps it
  to an answer (the one place that maps failures to statuses), or, when no answer is
  possible any more (the head went out, the client is gone), the stream is reset.
* :meth:`AnswerDoor.record`: once per request, whatever happened: the access-log line and
  ``spooky_requests_total`` / ``spooky_requests_by_reason_total{reason,status_class}``
  (plus the validation / policy / early-data counters for the proxy's own refusals), and
  the end of the request's trace span when it has one (``proxy/tracing.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from spooky_trio.http.errors import ErrorResponse, ProxyError, ResponseTooLarge, unwrap
from spooky_trio.http.messages import (
    RequestBodyError,
    RequestBodyTimeout,
    RequestBodyTooLarge,
)
from spooky_trio.proxy.tracing import finish_span
from spooky_trio.upstream.errors import (
    UnforwardableRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.proxy.context import RequestContext

log = logging.getLogger("spooky.proxy")

_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


@attrs.frozen(slots=True)
class Answer:
    """A complete response the proxy makes itself.

    ``reason`` names the step that decided it (the access log's ``reason``). ``rejection``:
    the proxy refused the request (counted in ``spooky_request_validation_rejects`` /
    ``spooky_policy_denied`` / ``spooky_early_data_rejected`` by status), as opposed to a
    backend failure it reports (502/504).
    """

    status: int
    reason: str
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    rejection: bool = True

    @classmethod
    def from_error(cls, error: ErrorResponse, headers: Sequence[tuple[bytes, bytes]] = (), *, rejection: bool = True) -> Answer:
        """The plain-text error answer of ``error`` (the one shape of every error body)."""
        return cls(error.status, error.reason, error.body(), (_TEXT_PLAIN, *headers), rejection)


def error_response_for(exc: BaseException) -> ErrorResponse | None:
    """The error response for a failure, or None when the only answer is a stream reset."""
    exc = unwrap(exc)
    if isinstance(exc, ProxyError):
        return exc.response
    if isinstance(exc, UnforwardableRequest):
        return ErrorResponse(400, exc.reason, "the request cannot be expressed to the backend")
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
    return None


def _reset_reason(exc: BaseException) -> str:
    if isinstance(exc, trio.BrokenResourceError):
        return "client_gone"
    if isinstance(exc, RequestBodyError):
        return "client_body_error"
    if isinstance(exc, (UpstreamError, ResponseTooLarge)):
        return exc.reason
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    return type(exc).__name__


class AnswerDoor:
    """The three ways a request ends (module docstring); ``metrics`` may be None (tests)."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    async def answer(self, ctx: RequestContext, answer: Answer, *, again: bool = True) -> None:
        """Send ``answer`` to the client through ``ctx.sink``; a client that went away
        meanwhile turns it into a reset (recorded as ``client_gone``). A response hook that
        fails (a plugin's: ``proxy/plugins.py``) raises its 500 from ``send_headers``: that
        answer replaces this one (``again``: once)."""
        sink = ctx.sink
        assert sink is not None
        ctx.outcome = "error" if answer.status >= 400 else "local"
        ctx.reason = answer.reason
        if answer.rejection and self.metrics is not None:
            self.metrics.request_rejected(answer.status)
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        # a HEAD answer has the GET answer's length and no body (RFC 9110 9.3.2)
        body = b"" if ctx.request.method == b"HEAD" else answer.body
        try:
            await sink.send_headers(answer.status, headers, end_stream=not body)
            if body:
                await sink.send_data(body, end_stream=True)
        except trio.BrokenResourceError:
            log.debug("client went away before the %d answer", answer.status)
            ctx.outcome, ctx.reason = "reset", "client_gone"
        except ProxyError as exc:
            if not again or sink.headers_sent:
                raise
            await self.answer(ctx, Answer.from_error(exc.response, exc.headers), again=False)

    async def fail(self, ctx: RequestContext, exc: BaseException) -> None:
        """``exc`` ended the request: answer the error it stands for, or reset the stream.
        Re-raises what is neither a request nor a backend failure (a bug: the ingress's task
        boundary logs and counts it)."""
        failure = unwrap(exc)
        error = error_response_for(failure)
        request = ctx.request
        if isinstance(failure, UpstreamError):
            where = f"{ctx.pool}/{ctx.backend}" if ctx.backend is not None else "-"
            log.warning("upstream %s failed for %s %s: %s: %s", where, request.method.decode(), request.path.decode("latin-1"), failure.reason, failure)
        elif error is None and not isinstance(failure, (RequestBodyError, ResponseTooLarge, trio.BrokenResourceError)):
            ctx.outcome, ctx.reason = "reset", "internal_error"
            raise exc
        sink = ctx.sink
        assert sink is not None
        if sink.headers_sent or error is None:
            log.debug("resetting stream of %s %s: %r", request.method.decode(), request.path.decode("latin-1"), failure)
            reason = error.reason if error is not None else _reset_reason(failure)
            sink.reset(reason)
            ctx.outcome, ctx.reason = "reset", reason
            return
        headers = failure.headers if isinstance(failure, ProxyError) else ()
        ours = isinstance(failure, (ProxyError, RequestBodyError, UnforwardableRequest))
        await self.answer(ctx, Answer.from_error(error, headers, rejection=ours))

    def record(self, ctx: RequestContext) -> None:
        """The record step: count the request, write its access-log line and end its span
        (once)."""
        if ctx.reason is None:
            ctx.reason = "ok" if ctx.outcome in ("ok", "tunnel") else ctx.outcome
        if self.metrics is not None:
            self.metrics.request_done(ctx.status if ctx.outcome != "reset" else None, ctx.reason)
        ctx.emit()
        if ctx.span is not None:
            finish_span(ctx)
