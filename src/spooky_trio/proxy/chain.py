"""The request path as one filter chain, built once per generation, and its entry point.

A **filter** is a small object built from validated config once per generation, with

* ``name``: what the access log's ``reason`` and the docs call it;
* ``async on_request(ctx) -> Answer | None``: runs in chain order; it may read and change
  the :class:`~spooky_trio.proxy.context.RequestContext` (route, pool, headers...), answer
  the request itself by returning an :class:`~spooky_trio.proxy.answers.Answer` (the chain
  stops there) or by raising :class:`~spooky_trio.http.errors.ProxyError`, and register
  cleanups with ``ctx.on_finish`` (slots it took);
* optionally ``async on_response(ctx, head)``: sees and may change the response head
  (:class:`~spooky_trio.proxy.context.ResponseHead`) of every answer given after it ran,
  a backend's or a local one; hooks run in reverse chain order. A filter that has one
  registers itself for the request with ``ctx.add_response_filter(self)``.

A built-in step that never waits may define ``on_request`` as a plain function instead (a
:class:`SyncFilter`): the chain calls it without creating a coroutine, which saves about a
microsecond per step per request; plugins are always async. The chain ends in a
**terminal** (:class:`Terminal`): the step that produces the response
when no filter answered (``proxy/forward.py``: balance has chosen a backend; forward with
retries and hedging, or relay a tunnel). Built-in filters and plugins implement the same
protocol. The order (docs/architecture.md, and ../shared/spec/extensions.md section 0 for
the steps still to come) is fixed by :func:`spooky_trio.proxy.filters.build_chain`.

:class:`Proxy` is the entry point every ingress calls: :meth:`Proxy.handle` runs a request
through the chain of the generation it takes; :meth:`Proxy.reject` answers a request the
ingress refused before the chain (431, 400, 408, 501). Both end in the answer door's record
step (``proxy/answers.py``), so every request gets one access-log line and one count.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from spooky_trio.core.generation import Generation
from spooky_trio.http.errors import ErrorResponse, ProxyError
from spooky_trio.http.messages import DownstreamRequest, ResponseSink
from spooky_trio.observability.access import CountingBody
from spooky_trio.proxy.answers import Answer, AnswerDoor
from spooky_trio.proxy.context import RequestContext, ResponseHead

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics


class Filter(Protocol):
    """One step of the request path (module docstring)."""

    name: str

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        """Run for ``ctx``; return an answer to stop the chain, None to continue."""
        ...


class SyncFilter(Protocol):
    """A built-in step that never waits: the same contract as :class:`Filter`, called
    without a coroutine (module docstring)."""

    name: str

    def on_request(self, ctx: RequestContext) -> Answer | None:
        """Run for ``ctx``; return an answer to stop the chain, None to continue."""
        ...


class ResponseFilter(Filter, Protocol):
    """A filter that also sees response heads (module docstring)."""

    async def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        """Inspect or change ``head`` before it goes to the client."""
        ...


class Terminal(Protocol):
    """The last step: produce the response when no filter answered."""

    name: str

    async def serve(self, ctx: RequestContext) -> None:
        """Answer ``ctx`` through ``ctx.sink`` (or raise: the answer door maps it)."""
        ...


SyncHook = Callable[[RequestContext], "Answer | None"]
AsyncHook = Callable[[RequestContext], Awaitable["Answer | None"]]


class Chain:
    """The filters of one generation, in order, and its terminal; built once per generation."""

    __slots__ = ("generation", "filters", "terminal", "_steps", "__weakref__")

    def __init__(self, generation: Generation, filters: Sequence[Filter | SyncFilter], terminal: Terminal) -> None:
        self.generation = generation
        self.filters = tuple(filters)
        self.terminal = terminal
        #: per filter its hook, sync or async, told apart once here rather than per request
        self._steps: tuple[tuple[SyncHook | None, AsyncHook | None], ...] = tuple(
            (None, f.on_request) if inspect.iscoroutinefunction(f.on_request) else (f.on_request, None)  # type: ignore[misc]
            for f in self.filters
        )

    @property
    def names(self) -> list[str]:
        """The step names in order (docs, tests, ``/admin/runtime``)."""
        return [f.name for f in self.filters] + [self.terminal.name]

    async def run(self, ctx: RequestContext) -> Answer | None:
        """Run the filters, then the terminal; returns the answer a filter gave, if any."""
        for sync_hook, async_hook in self._steps:
            answer = sync_hook(ctx) if sync_hook is not None else await async_hook(ctx)  # type: ignore[misc]
            if answer is not None:
                return answer
        await self.terminal.serve(ctx)
        return None


#: builds the chain of a generation (``proxy/filters.py``; tests pass their own)
ChainBuilder = Callable[[Generation], Chain]


class Proxy:
    """Serves requests against the generation ``pick_generation()`` returns (module docstring)."""

    def __init__(self, pick_generation: Callable[[], Generation], build_chain: ChainBuilder, metrics: Metrics | None = None) -> None:
        self._pick_generation = pick_generation
        self._build_chain = build_chain
        self.door = AnswerDoor(metrics)
        #: generation -> its chain; generations that nothing references any more drop out
        self._chains: weakref.WeakKeyDictionary[Generation, Chain] = weakref.WeakKeyDictionary()
        #: the chain used last (most requests use the same generation: skip the lookup)
        self._last: Chain | None = None

    def chain_for(self, generation: Generation) -> Chain:
        """The chain of ``generation``, built on first use. A reload calls it when it stages
        a generation, so a chain that cannot be built fails the reload, not a request."""
        chain = self._chains.get(generation)
        if chain is None:
            chain = self._chains[generation] = self._build_chain(generation)
        self._last = chain
        return chain

    async def handle(self, request: DownstreamRequest, sink: ResponseSink) -> None:
        """Serve one request to completion: chain, answer door, record. Never raises for
        request or backend failures (a bug propagates to the ingress's task boundary, after
        the request was recorded as reset)."""
        generation = self._pick_generation()
        ctx = RequestContext(request, generation)
        if request.body is not None:
            request.body = CountingBody(request.body, ctx)
        ctx.attach_sink(sink)
        door = self.door
        try:
            chain = self._last
            if chain is None or chain.generation is not generation:
                chain = self.chain_for(generation)
            answer = await chain.run(ctx)
            if answer is not None:
                await door.answer(ctx, answer)
            elif ctx.outcome == "reset" and ctx.reason is None:
                ctx.outcome = "ok"  # the terminal relayed a backend's answer
        except ProxyError as exc:
            await door.answer(ctx, Answer.from_error(exc.response, exc.headers))
        except BaseException as exc:  # a request that raised or was cancelled counts as a failure
            if isinstance(exc, Exception):
                await door.fail(ctx, exc)
            else:
                ctx.outcome, ctx.reason = "reset", "cancelled"
                raise
        finally:
            ctx.run_cleanups()
            door.record(ctx)

    async def reject(self, request: DownstreamRequest, sink: ResponseSink, error: ErrorResponse) -> None:
        """Answer ``request`` with ``error`` before any chain ran (the ingress found it
        malformed or over a limit): the same door, one access-log line and one count."""
        ctx = RequestContext(request, None)
        ctx.attach_sink(sink)
        try:
            await self.door.answer(ctx, Answer.from_error(error))
        finally:
            self.door.record(ctx)
