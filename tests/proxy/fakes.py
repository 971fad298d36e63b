"""Socket-free stand-ins for the chain's unit tests: a recording response sink and an
upstream pool whose backends answer from a script."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.http.messages import DownstreamRequest, Headers, UpstreamRequest
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from spooky_trio.upstream import BackendTarget, UpstreamResponse

CONFIG = """
listen:
  tls: {{cert: /c.pem, key: /k.pem}}
upstream:
  app:
    route: {{path_prefix: /}}
    load_balancing: {{type: round-robin}}
    backends:
      - {{id: a, address: "http://10.0.0.1:80"}}
      - {{id: b, address: "http://10.0.0.2:80"}}
performance:
  max_request_body_bytes: 100
resilience:
  protocol:
    allowed_methods: [GET, POST, HEAD]
    denied_path_prefixes: [/admin]
{extra}
"""


class RecordingSink:
    """A :class:`~spooky_trio.http.messages.ResponseSink` that keeps what it was sent;
    ``broken``: every send raises BrokenResourceError (the client went away)."""

    def __init__(self, *, broken: bool = False) -> None:
        self.status: int | None = None
        self.headers: Headers = []
        self.body = b""
        self.trailers: Headers | None = None
        self.ended = False
        self.reset_reason: str | None = None
        self.headers_sent = False
        self.broken = broken

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise trio.BrokenResourceError
        self.status, self.headers, self.headers_sent = status, list(headers), True
        self.ended = end_stream

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise trio.BrokenResourceError
        self.body += data
        self.ended = end_stream

    async def send_trailers(self, trailers: Headers) -> None:
        self.trailers, self.ended = list(trailers), True

    def reset(self, reason: str) -> None:
        self.reset_reason = reason


class ScriptedResponse(UpstreamResponse):
    """A backend answer: ``status``, ``headers``, ``chunks`` of body, then ``fail`` (if any)."""

    http_version = "1.1"

    def __init__(self, status: int, headers: Headers, chunks: list[bytes], fail: BaseException | None = None) -> None:
        self.status, self.headers, self.trailers = status, headers, []
        self._chunks = list(chunks)
        self._fail = fail

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._chunks:
            return self._chunks.pop(0)
        if self._fail is not None:
            raise self._fail
        return b""

    @property
    def complete(self) -> bool:
        return not self._chunks

    @property
    def buffered_bytes(self) -> int:
        return sum(map(len, self._chunks))


#: a backend's behaviour: the outgoing request -> a response, or raise an upstream error
Script = Callable[[UpstreamRequest], ScriptedResponse]


class ScriptedUpstream:
    """The :class:`~spooky_trio.upstream.UpstreamPool` interface the forward step uses,
    answering per backend host from ``scripts``; ``sent`` keeps (host, request) pairs."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.sent: list[tuple[str, UpstreamRequest]] = []

    @contextlib.asynccontextmanager
    async def exchange(self, target: BackendTarget, request: UpstreamRequest, *, connect_timeout: float,
                       response_timeout: float) -> AsyncIterator[UpstreamResponse]:
        await trio.lowlevel.checkpoint()
        self.sent.append((target.host, request))
        if request.body is not None:
            request_body = b"".join([chunk async for chunk in request.body])
            self.sent[-1] = (target.host, UpstreamRequest(request.method, request.target, request.authority, request.headers,
                                                          None, len(request_body), request.scheme))
        yield self.scripts[target.host](request)


def ok(body: bytes = b"hello", status: int = 200) -> Script:
    return lambda request: ScriptedResponse(status, [(b"content-length", str(len(body)).encode())], [body])


def build(scripts: dict[str, Script], extra: str = "", **kwargs: Any) -> tuple[Proxy, Generation, StateStore, Metrics, ScriptedUpstream]:
    """A Proxy over one generation of :data:`CONFIG` whose backends ``10.0.0.1`` (a) and
    ``10.0.0.2`` (b) answer from ``scripts``."""
    store = StateStore()
    generation = Generation.build(load_config_text(CONFIG.format(extra=extra)), state=store)
    metrics = Metrics()
    metrics.attach_rate_limits(store.rate_limits)
    upstream = ScriptedUpstream(scripts)
    proxy = Proxy(lambda: generation, lambda g: build_chain(g, upstream=upstream, state=store, metrics=metrics), metrics)  # type: ignore[arg-type]
    return proxy, generation, store, metrics, upstream


def request(path: bytes = b"/", method: bytes = b"GET", *, body: Any = None, content_length: int | None = None,
            headers: Headers | None = None) -> DownstreamRequest:
    return DownstreamRequest(
        method=method, scheme=b"https", authority=b"example.com", path=path, headers=headers or [],
        protocol="HTTP/3", client_address=("192.0.2.1", 50000), body=body, content_length=content_length,
    )


def count(metrics: Metrics, reason: str, status_class: str) -> float:
    return metrics.registry.get_sample_value("spooky_requests_by_reason_total", {"reason": reason, "status_class": status_class}) or 0.0
