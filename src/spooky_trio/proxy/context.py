"""The per-request context every filter reads and writes, and the client sink around it.

One :class:`RequestContext` per request, made by :class:`~spooky_trio.proxy.chain.Proxy`
when the request arrives and dropped after its access-log line is written. It *is* the
request's access record (it extends
:class:`~spooky_trio.observability.access.AccessRecord`), so what the filters decide (pool,
backend, status, reason) is what the log line and the metrics show, with nothing copied.

:class:`ClientSink` wraps the ingress's response sink: it counts the bytes sent, records
the status, and runs the response-head hooks of the filters that ran
(``Filter.on_response``, in reverse order) before the head goes out, whoever answers: a
backend through the forward step or a filter through the answer door.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from spooky_trio.config import Config
from spooky_trio.core.generation import Generation, PoolRuntime
from spooky_trio.http.messages import DownstreamRequest, Headers, ResponseSink
from spooky_trio.observability.access import AccessRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from spooky_trio.proxy.chain import ResponseFilter
    from spooky_trio.proxy.lease import BackendLease
    from spooky_trio.resilience.policy import ConnectTarget


@attrs.define(slots=True, eq=False)
class ResponseHead:
    """A response head on its way to the client; response hooks may change both fields."""

    status: int
    headers: Headers


class RequestContext(AccessRecord):
    """Everything one request carries through the filter chain (module docstring).

    Set at the start: ``request``, ``generation`` (taken once: the request uses it to the
    end) and ``config`` (its config). Decided by filters: ``authority`` (validated),
    ``route_pool`` (name of the pool the route chose: it owns the request's policy),
    ``serving_pool`` (the pool that serves it: limits, health and balancing; the log's
    ``pool`` is its name), ``lease`` (the backend of the attempt in progress; the log's
    ``backend`` is its id), ``connect_target`` (a permitted CONNECT tunnel), ``claims`` (the
    claims of the JWT the ``auth`` step verified, for the plugins' view). The record
    fields (``status``, ``reason``, ``outcome``, ``pool``, ``backend``, bytes) come from
    :class:`~spooky_trio.observability.access.AccessRecord`.
    """

    __slots__ = ("generation", "config", "sink", "authority", "route_pool", "serving_pool", "lease", "connect_target", "response_headers",
                 "forward_target", "_cleanups", "_response_filters", "span", "claims")

    def __init__(self, request: DownstreamRequest, generation: Generation | None) -> None:
        super().__init__(request)
        #: None only for answers the ingress gives before any generation was taken
        self.generation = generation
        self.config: Config | None = generation.config if generation is not None else None
        #: set by :meth:`attach_sink`
        self.sink: ClientSink | None = None
        self.authority = ""
        self.route_pool: str | None = None
        self.serving_pool: PoolRuntime | None = None
        self.lease: BackendLease | None = None
        self.connect_target: ConnectTarget | None = None
        #: added to the response head, whoever answers (the route-decision header)
        self.response_headers: Headers = []
        #: the target sent upstream when it is not ``request.path`` (the client's own
        #: target, with ``forward_normalized_path: false``)
        self.forward_target: bytes | None = None
        self._cleanups: list[Callable[[], object]] = []
        self._response_filters: list[ResponseFilter] = []
        #: the request's trace span (``observability.tracing``: ``proxy/tracing.py``), ended
        #: by the record step
        self.span: Span | None = None
        #: the verified JWT's claims (``proxy/auth.py``), None without one
        self.claims: Mapping[str, object] | None = None

    def attach_sink(self, sink: ResponseSink) -> ClientSink:
        """Wrap the ingress's ``sink``; every response of this request goes through it."""
        client = self.sink = ClientSink(sink, self)
        return client

    # -- what filters register --

    def on_finish(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup()`` when the request ends (after its answer, before the record
        step), in reverse order of registration, whatever happened (slots given back)."""
        self._cleanups.append(cleanup)

    def run_cleanups(self) -> None:
        """Run what :meth:`on_finish` registered (the chain does, once)."""
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            cleanup()

    def add_response_filter(self, response_filter: ResponseFilter) -> None:
        """``response_filter`` ran on this request: its response hook sees the head."""
        self._response_filters.append(response_filter)

    async def finish_head(self, status: int, headers: Headers) -> tuple[int, Headers]:
        """The head the client gets: ``response_headers`` added, then the response hooks of
        the filters that ran, last first."""
        if self.response_headers:
            headers = [*headers, *self.response_headers]
        if not self._response_filters:
            return status, headers
        head = ResponseHead(status, headers)
        for response_filter in reversed(self._response_filters):
            await response_filter.on_response(self, head)
        return head.status, head.headers


class ClientSink:
    """The ingress's response sink with counting and response hooks (module docstring);
    other attributes (``open_tunnel``, ``finished``...) pass through to the ingress's sink."""

    __slots__ = ("_inner", "_ctx")

    def __init__(self, inner: ResponseSink, ctx: RequestContext) -> None:
        self._inner = inner
        self._ctx = ctx

    @property
    def headers_sent(self) -> bool:
        return self._inner.headers_sent

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        ctx = self._ctx
        if ctx.response_headers or ctx._response_filters:  # (most answers have neither)
            status, headers = await ctx.finish_head(status, headers)
        await self._inner.send_headers(status, headers, end_stream=end_stream)
        ctx.status = status

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        await self._inner.send_data(data, end_stream=end_stream)
        self._ctx.bytes_out += len(data)

    async def send_trailers(self, trailers: Headers) -> None:
        await self._inner.send_trailers(trailers)

    def reset(self, reason: str) -> None:
        self._inner.reset(reason)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)
