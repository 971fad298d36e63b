"""The ``mirror`` step: traffic_policy ``mirror`` of the pool the route chose sends a copy of
``percent`` of its requests to another pool and discards the answer (extensions.md section
1; the copy goes out with the forward, section 0).

The step runs last before ``forward``, once the request was admitted and has a backend (a
shed or refused request is not copied; neither is a tunnel). It never makes the request
wait: it takes a place among the pool's ``max_inflight`` copies
(:class:`~spooky_trio.core.shadows.ShadowTasks`, the Server's shadow nursery) or drops the
copy, and the copy runs as its own task there, bounded by ``timeout_ms`` from its start.

The body is teed while it streams to the primary backend (:class:`BodyTee`): each chunk the
primary reads is also kept for the copy, with no wait, up to ``max_body_bytes``. A body
declared larger is not copied; one that grows past the bound while streaming drops its
copy; a copy waits until the primary read the whole body and is dropped if the request ends
first (each counted in ``spooky_mirror_copies_total{result}``). So the primary's latency,
status, body and backpressure never depend on the shadow: a slow, failing or dead shadow
costs only its own task.

The copy is the request as the primary backend gets it (method, target after rewrites,
headers, body bytes), through the mirror pool's host and forwarded-header policies, with
``-shadow`` appended to the host name before any port (``api.example.com-shadow:8443``,
extensions.md section 7). Its backend is the mirror pool's balancer's choice among its
available backends; its outcome is recorded nowhere but in the mirror metrics (no passive
health, breaker, latency sample or admission signal: the shadow must never influence the
primary path). Its answer is read and discarded (at most ``max_response_body_bytes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from spooky_trio.config import Config
from spooky_trio.core.generation import BackendRuntime, Generation, PoolRuntime
from spooky_trio.core.shadows import ShadowTasks
from spooky_trio.http.headers import build_upstream_headers, upstream_authority
from spooky_trio.http.messages import DownstreamBody, DownstreamRequest, UpstreamRequest
from spooky_trio.http.validate import TRANSPORT_SCHEME
from spooky_trio.observability.traffic_metrics import TrafficCounters
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.bodies import replay_body
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.draws import basis_points, policy_rng
from spooky_trio.proxy.tunnel import wants_tunnel

if TYPE_CHECKING:
    from spooky_trio.upstream import UpstreamPool


class BodyTee:
    """The request body the primary reads, copied for a mirror copy up to ``limit`` bytes
    (module docstring). ``state``: ``reading``, then ``complete``, ``too_large`` or
    ``incomplete`` (the request ended first); ``done`` is set when it leaves ``reading``."""

    __slots__ = ("_inner", "limit", "declared", "chunks", "size", "state", "done")

    def __init__(self, inner: DownstreamBody, limit: int, declared: int | None) -> None:
        self._inner = inner
        self.limit = limit
        self.declared = declared
        self.chunks: list[bytes] = []
        self.size = 0
        self.state = "reading"
        self.done = trio.Event()

    async def receive(self) -> bytes:
        chunk = await self._inner.receive()
        if self.state == "reading":
            if not chunk:
                self._end("complete")
            elif self.size + len(chunk) > self.limit:
                self._end("too_large")
            else:
                self.chunks.append(chunk)
                self.size += len(chunk)
                if self.size == self.declared:
                    self._end("complete")
        return chunk

    def close(self) -> None:
        """The request ended: a copy still waiting for the body is dropped."""
        if self.state == "reading":
            self._end("incomplete")

    def _end(self, state: str) -> None:
        self.state = state
        if state != "complete":
            self.chunks = []
        self.done.set()


def shadow_authority(authority: bytes) -> bytes:
    """``authority`` with ``-shadow`` on its host, before any port."""
    if authority.startswith(b"["):
        end = authority.find(b"]") + 1
        return authority[:end] + b"-shadow" + authority[end:]
    host, colon, port = authority.rpartition(b":")
    if colon and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"


def pick_backend(pool: PoolRuntime, request: DownstreamRequest) -> BackendRuntime | None:
    """The mirror pool's balancer's choice among its available backends (no slot, no breaker
    probe: a copy must leave the pool's state as it was)."""
    now = trio.current_time()
    candidates = [index for index, backend in enumerate(pool.backends) if backend.state.available(now)]
    return pool.backends[pool.balancer.choose(candidates, request)] if candidates else None


class ShadowCopy:
    """One copy: what it needs of the request, taken when the step ran, and its task."""

    __slots__ = ("mirror", "request", "target", "headers", "authority", "tee")

    def __init__(self, mirror: PoolMirror, ctx: RequestContext, tee: BodyTee | None) -> None:
        request = ctx.request
        self.mirror = mirror
        self.request = request
        self.target = ctx.forward_target or request.path
        self.headers = list(request.headers)
        self.authority = ctx.authority.encode("latin-1")
        self.tee = tee

    async def run(self) -> None:
        """Send the copy within ``timeout_ms`` and count how it ended."""
        mirror = self.mirror
        result = "timeout"
        with trio.move_on_after(mirror.timeout):
            result = await self._send()
        if mirror.counters is not None:
            mirror.counters.mirror[(mirror.pool, mirror.shadow.name, result)] += 1

    async def _send(self) -> str:
        mirror, tee = self.mirror, self.tee
        chunks = None
        if tee is not None:
            await tee.done.wait()
            if tee.state != "complete":
                return "dropped_body_too_large" if tee.state == "too_large" else "dropped_body_incomplete"
            chunks = tee.chunks
        pool = mirror.shadow
        backend = pick_backend(pool, self.request)
        if backend is None:
            return "dropped_no_backend"
        policy = pool.config
        headers = build_upstream_headers(self.headers, forwarded_mode=policy.forwarded_headers.mode,
                                         client_ip=self.request.client_address[0], scheme=TRANSPORT_SCHEME,
                                         client_authority=self.authority)
        authority = upstream_authority(policy.host_policy.mode, client_authority=self.authority,
                                       rewrite_host=policy.host_policy.host, backend_authority=backend.authority)
        outgoing = UpstreamRequest(
            method=self.request.method, target=self.target, authority=shadow_authority(authority),
            headers=[(n, v) for n, v in headers if n != b"content-length"],
            body=replay_body(chunks) if chunks is not None else None,
            content_length=sum(map(len, chunks)) if chunks is not None else None,
            scheme=backend.target.scheme.encode("ascii"),
        )
        perf = mirror.config.performance
        limit = perf.max_response_body_bytes
        try:
            async with mirror.upstream.exchange(backend.connect_target, outgoing, connect_timeout=perf.backend_connect_timeout_ms / 1000,
                                                response_timeout=mirror.timeout) as response:
                received = 0
                while received <= limit:  # the answer is discarded; past the bound the exchange is aborted
                    chunk = await response.receive()
                    if not chunk:
                        break
                    received += len(chunk)
        except Exception:  # noqa: BLE001 - any failure of the copy is only counted
            return "failed"
        return "completed"


class PoolMirror:
    """A pool's ``mirror``, compiled, with what its copies need."""

    __slots__ = ("pool", "shadow", "bp", "max_body", "max_inflight", "timeout", "config", "upstream", "counters")

    def __init__(self, pool: str, shadow: PoolRuntime, config: Config, upstream: UpstreamPool, counters: TrafficCounters | None) -> None:
        mirror = config.upstream[pool].traffic_policy.mirror  # type: ignore[union-attr]  # (the caller checked)
        assert mirror is not None
        self.pool = pool
        self.shadow = shadow
        self.bp = basis_points(mirror.percent)
        self.max_body = mirror.max_body_bytes
        self.max_inflight = mirror.max_inflight
        self.timeout = mirror.timeout_ms / 1000
        self.config = config
        self.upstream = upstream
        self.counters = counters


class Mirror:
    """The mirror step (module docstring); in the chain only when a pool has a ``mirror``."""

    name = "mirror"

    def __init__(self, generation: Generation, upstream: UpstreamPool, shadows: ShadowTasks, counters: TrafficCounters | None) -> None:
        config = generation.config
        self.pools = {
            name: PoolMirror(name, generation.pools[pool.traffic_policy.mirror.pool], config, upstream, counters)
            for name, pool in config.upstream.items()
            if pool.traffic_policy is not None and pool.traffic_policy.mirror is not None and not pool.traffic_policy.answers_locally
        }
        self.shadows = shadows
        self.rng = policy_rng(config, generation.number, "mirror")
        self.counters = counters

    def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        mirror = self.pools.get(pool)
        if mirror is None or ctx.connect_target is not None:
            return None
        request = ctx.request
        if mirror.bp < 10000 and self.rng.randrange(10000) >= mirror.bp:
            return None
        if request.method == b"CONNECT" or wants_tunnel(request):
            return None
        body = request.body
        if body is not None and request.content_length is not None and request.content_length > mirror.max_body:
            self._drop(mirror, "dropped_body_too_large")
            return None
        tee = BodyTee(body, mirror.max_body, request.content_length) if body is not None else None
        copy = ShadowCopy(mirror, ctx, tee)
        if not self.shadows.try_start(pool, mirror.max_inflight, copy.run):
            self._drop(mirror, "dropped_draining" if self.shadows.closing else "dropped_max_inflight")
            return None
        if tee is not None:
            request.body = tee
            ctx.on_finish(tee.close)
        return None

    def _drop(self, mirror: PoolMirror, result: str) -> None:
        if self.counters is not None:
            self.counters.mirror[(mirror.pool, mirror.shadow.name, result)] += 1
