"""The ``plugins`` step of the request chain: the filters of the pool the route chose
(``upstream.<pool>.filters``, in order), right after external auth (extensions.md section 0;
docs/plugins.md).

For each request of a pool with filters the step makes one
:class:`~spooky_trio.plugin.Request` view (copies and the request's own header list: from
it no path leads to the context, the lease, the generation or another pool), reads the body
first when a filter declared ``request_body_limit`` (bounded, under the client body
timeouts, outside any plugin's deadline), then calls each filter's ``on_request`` through
its :class:`~spooky_trio.proxy.plugin_calls.PluginRuntime` (deadline, timing, failures: a
500). After each hook what it changed goes back to the request: the path and query (the
target sent upstream; the access log keeps the client's), a replaced body (its length
with it). A hook that returns a :class:`~spooky_trio.plugin.Response` answers the request.

Response hooks: the filters whose request step ran (or that only have ``on_response``) are
registered for the request as one response filter, which calls them last first on every
answer's head (a backend's or a local one). A response hook that fails turns the answer
into its 500 (the answer door tries once more, without the plugins' response hooks).

The filters of one generation are one :class:`PluginSet`, built with its chain
(:func:`plugin_step`): a reload builds new ones, and a request keeps the set of the
generation it started on. When a filter has a background task, the set counts the requests
inside it, so the generation's background tasks (``proxy/plugin_tasks.py``) are cancelled
only once they are done.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from spooky_trio.config.issues import format_path
from spooky_trio.config.plugins import PluginLoadError, find_factory, make_filter
from spooky_trio.config.schema_plugins import ENTRY_POINT_GROUP
from spooky_trio.core.generation import Generation
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.messages import DownstreamRequest, RequestBodyTooLarge
from spooky_trio.plugin import Headers, Request, Response, ResponseHead, Route
from spooky_trio.plugin.headers import RESPONSE_MANAGED, raw_fields
from spooky_trio.plugin.messages import head_status, request_target, take_changed_body
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.bodies import limited_body
from spooky_trio.proxy.chain import Chain
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.context import ResponseHead as Head
from spooky_trio.proxy.plugin_calls import PluginRuntime

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics


class BufferedBody:
    """A request body read whole (a filter declared ``request_body_limit``), sent on as is."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive(self) -> bytes:
        data, self._data = self._data, b""
        return data


class PluginSet:
    """The plugin filters of one generation (module docstring); ``inflight`` counts the
    requests that entered the step and have not ended."""

    def __init__(self, plugins: dict[str, PluginRuntime], grace: float) -> None:
        self.plugins = plugins
        #: how long a retired generation's background tasks wait for its requests to end
        self.grace = grace
        self.inflight = 0
        #: requests are counted only when a filter has a background task (nothing else waits)
        self.counting = bool(self.with_background())
        self._idle: trio.Event | None = None
        #: bound once: registered with every request (no allocation per request)
        self.leave = self._leave

    def _leave(self) -> None:
        self.inflight -= 1
        if not self.inflight and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is inside the set's filters."""
        while self.inflight:
            self._idle = trio.Event()
            await self._idle.wait()

    def with_background(self) -> list[PluginRuntime]:
        """The filters that have a background task."""
        return [plugin for plugin in self.plugins.values() if plugin.background is not None]


class PoolPlugins:
    """The filters of one pool, in its ``filters`` order."""

    __slots__ = ("pool", "route", "plugins", "body_limit", "owner", "idle_timeout")

    def __init__(self, pool: str, route: Route, plugins: list[PluginRuntime], max_body: int, owner: PluginSet,
                 idle_timeout: float) -> None:
        self.pool = pool
        self.route = route
        self.plugins = tuple(plugins)
        wanted = max((plugin.body_limit for plugin in plugins), default=0)
        #: read the body whole first, at most this many bytes (0: let it stream)
        self.body_limit = min(wanted, max_body)
        self.owner = owner
        self.idle_timeout = idle_timeout

    async def run(self, ctx: RequestContext) -> Answer | None:
        owner = self.owner
        if owner.counting:
            owner.inflight += 1
            ctx.on_finish(owner.leave)
        request = ctx.request
        body: bytes | None = b"" if request.body is None else None
        if body is None and self.body_limit:
            body = await self._read_body(request)
        view = Request(request.method, ctx.authority, request.path, Headers(request.headers), request.client_address,
                       request.protocol, self.pool, self.route, request.tls, ctx.claims, request.early_data, body)
        responses: ResponseHooks | None = None
        for plugin in self.plugins:
            result: object = None
            if plugin.on_request is not None:
                result = await plugin.request_hook(view)
                _write_back(ctx, request, view)
                if result is not None and not isinstance(result, Response):
                    raise plugin.invalid("on_request", result)
            if plugin.on_response is not None:
                if responses is None:
                    responses = ResponseHooks(view)
                    ctx.add_response_filter(responses)
                responses.plugins.append(plugin)
            if isinstance(result, Response):
                return plugin.answer(result)
        return None

    async def _read_body(self, request: DownstreamRequest) -> bytes:
        """The whole request body (413 past :attr:`body_limit`); the request keeps a copy to send on."""
        assert request.body is not None
        limit = self.body_limit
        if request.content_length is not None and request.content_length > limit:
            raise RequestBodyTooLarge(f"request body exceeds {limit} bytes")
        chunks = [chunk async for chunk in limited_body(request.body, limit=limit, declared=request.content_length,
                                                         idle_timeout=self.idle_timeout)]
        data = b"".join(chunks)
        request.body, request.content_length = BufferedBody(data), len(data)
        return data


def _write_back(ctx: RequestContext, request: DownstreamRequest, view: Request) -> None:
    """What a hook changed, onto the request the backend gets (module docstring)."""
    target = request_target(view)
    if target is not request.path:
        if ctx.client_target is None:
            ctx.client_target = request.path  # the log shows what the client asked for
        request.path, ctx.forward_target = target, None
    body = take_changed_body(view)
    if body is not None:
        request.body, request.content_length = BufferedBody(body), len(body)


class ResponseHooks:
    """The response hooks of one request's filters, as one response filter of the chain."""

    __slots__ = ("view", "plugins", "failed")

    name = "plugins"

    def __init__(self, view: Request) -> None:
        self.view = view
        self.plugins: list[PluginRuntime] = []
        #: a hook failed: the 500 that replaces the answer goes out without them
        self.failed = False

    async def on_request(self, ctx: RequestContext) -> Answer | None:  # (the ResponseFilter protocol's; never called)
        return None

    async def on_response(self, ctx: RequestContext, head: Head) -> None:
        if self.failed:
            return
        view = ResponseHead(head.status, Headers(list(head.headers), RESPONSE_MANAGED))
        try:
            for plugin in reversed(self.plugins):
                result = await plugin.response_hook(self.view, view)
                if result is not None:
                    raise plugin.invalid("on_response", result)
        except ProxyError:
            self.failed = True
            raise
        head.status, head.headers = head_status(view), raw_fields(view.headers)


class PluginStep:
    """The ``plugins`` step (module docstring): the filters of the pool the route chose."""

    __slots__ = ("plugins", "pools")

    name = "plugins"

    def __init__(self, plugins: PluginSet, pools: dict[str, PoolPlugins]) -> None:
        self.plugins = plugins
        self.pools = pools

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = self.pools.get(ctx.route_pool) if ctx.route_pool is not None else None
        if pool is None:
            return None
        return await pool.run(ctx)


class PluginBuildError(Exception):
    """A plugin's filter could not be made for a generation (the message names the key)."""


def plugin_step(generation: Generation, metrics: Metrics | None) -> PluginStep | None:
    """The step of ``generation``, or None when no pool lists a filter. Makes one filter per
    ``plugins`` entry some pool lists (a factory call each); raises
    :class:`PluginBuildError` for one that cannot be made."""
    config = generation.config
    used = {name for pool in config.upstream.values() for name in pool.filters}
    if not used:
        return None
    installed = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if any(p.entry_point for p in config.plugins) else None
    runtimes: dict[str, PluginRuntime] = {}
    for index, plugin in enumerate(config.plugins):
        if plugin.name not in used:
            continue
        try:
            instance, hooks = make_filter(plugin, find_factory(plugin, installed))
        except PluginLoadError as exc:
            raise PluginBuildError(f"{format_path(('plugins', index, *exc.path))}: plugin {plugin.name!r}: {exc.message}") from None
        runtimes[plugin.name] = PluginRuntime(plugin.name, instance, hooks, plugin.plugin_timeout_ms / 1000, metrics)
    perf = config.performance
    plugins = PluginSet(runtimes, perf.shutdown_drain_timeout_ms / 1000)
    pools = {
        name: PoolPlugins(name, Route(pool.route.host, pool.route.path_prefix, pool.route.method) if pool.route is not None else Route(),
                          [runtimes[filter_name] for filter_name in pool.filters], perf.max_request_body_bytes, plugins,
                          perf.client_body_idle_timeout_ms / 1000)
        for name, pool in config.upstream.items() if pool.filters
    }
    return PluginStep(plugins, pools)


def plugins_of(chain: Chain) -> Iterator[PluginSet]:
    """The plugin set of ``chain`` (none, or one)."""
    for step in chain.filters:
        if isinstance(step, PluginStep):
            yield step.plugins
