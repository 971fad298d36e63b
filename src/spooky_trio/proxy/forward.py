"""The chain's terminal: forward to the leased backend (with retries and hedging) or relay a
tunnel.

* A permitted CONNECT (``ctx.connect_target``) is relayed by ``proxy/connect.py``.
* A WebSocket upgrade / extended CONNECT is relayed to the leased backend by
  ``proxy/tunnel.py``.
* Anything else is forwarded: one attempt per backend lease (``proxy/lease.py`` records its
  outcome), a failed attempt retried on another backend when that is safe and the retry
  budget allows (``resilience/retry.py``), an eligible request hedged on a second backend
  when no response head came within ``hedging.delay_ms`` (``resilience/hedge.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from spooky_trio.config import Config
from spooky_trio.core.generation import BackendRuntime, PoolRuntime
from spooky_trio.http.errors import unwrap
from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.proxy.bodies import limited_body
from spooky_trio.proxy.connect import relay_connect
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.lease import BackendLease
from spooky_trio.proxy.relay import relay_response, upstream_request
from spooky_trio.proxy.tunnel import relay_tunnel, wants_tunnel
from spooky_trio.resilience.hedge import HedgeRace, hedge_allowed
from spooky_trio.resilience.retry import (
    IDEMPOTENT_METHODS,
    MAX_ATTEMPTS,
    REPLAY_BUFFER_BYTES,
    RetryBudget,
    retry_reason,
)
from spooky_trio.upstream import UpstreamPool

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.proxy")

#: an UpstreamResponse's http_version -> the access log's and metrics' protocol name
_UPSTREAM_PROTOCOLS = {"1.1": "HTTP/1.1", "2": "HTTP/2", "3": "HTTP/3"}


class Forward:
    """The terminal step (module docstring); built once per generation."""

    name = "forward"

    def __init__(self, config: Config, upstream: UpstreamPool, guard: OverloadGuard, metrics: Metrics | None) -> None:
        self.config = config
        self.upstream = upstream
        self.guard = guard
        self.metrics = metrics

    async def serve(self, ctx: RequestContext) -> None:
        request = ctx.request
        perf = self.config.performance
        sink = ctx.sink
        assert sink is not None
        if ctx.connect_target is not None:
            ctx.outcome = "tunnel"
            await relay_connect(perf, ctx.connect_target, request, sink)
            ctx.status = ctx.status or 200
            return
        lease, pool = ctx.lease, ctx.serving_pool
        assert lease is not None and pool is not None
        if wants_tunnel(request):  # WebSocket upgrade / extended CONNECT: see proxy/tunnel.py
            ctx.outcome = "tunnel"
            try:
                await relay_tunnel(perf, pool.config, lease.backend, request, ctx.authority.encode("latin-1"), sink)
            finally:
                lease.release()
            ctx.status = ctx.status or 200
            return
        await self._forward(ctx, pool, lease)
        ctx.outcome = "ok"

    async def _forward(self, ctx: RequestContext, pool: PoolRuntime, lease: BackendLease) -> None:
        """Forward with retries and hedging; every attempt finishes its own lease."""
        request = ctx.request
        res = self.config.resilience
        budget: RetryBudget | None = None
        ratio = 0
        chunks: list[bytes] | None = None
        # a request that may have reached the backend is only sent again when its method is
        # idempotent (RFC 9110 9.2.2) and its body, if any, is buffered below; connect
        # failures (never reached) are retried for any method (retry_reason)
        replayable = request.body is None and request.method in IDEMPOTENT_METHODS
        if res.retry_budget.enabled:
            budget, ratio = self.guard.state.budgets.for_pool(pool.name, res.retry_budget)
            budget.deposit(ratio)
            if (
                not replayable
                and request.content_length is not None
                and request.content_length <= REPLAY_BUFFER_BYTES
                and request.method in IDEMPOTENT_METHODS
            ):
                chunks = await self._buffer_body(request)
                replayable = True
        hedging = res.hedging
        hedge = hedging.enabled and request.body is None and len(pool.backends) > 1 and hedge_allowed(request.method, pool.name, hedging)
        tried = [lease.backend]
        while True:
            try:
                if hedge:
                    await self._hedged(ctx, pool, lease, tried)
                else:
                    await self._attempt(ctx, lease, chunks)
                return
            except Exception as exc:
                sink = ctx.sink
                assert sink is not None
                if budget is None or sink.headers_sent:
                    raise
                retry = self._retry_lease(pool, request, unwrap(exc), replayable, tried, budget, ratio)
                if retry is None:
                    raise
                log.info("retrying %s %s on %s/%s after %s", request.method.decode(), request.path.decode("latin-1"),
                         retry.backend.pool, retry.backend.id, unwrap(exc))
                lease = ctx.lease = retry
                ctx.backend = retry.backend.id
                tried.append(retry.backend)

    def _retry_lease(
        self, pool: PoolRuntime, request: DownstreamRequest, failure: BaseException, replayable: bool,
        tried: list[BackendRuntime], budget: RetryBudget, ratio: int,
    ) -> BackendLease | None:
        """A lease on the backend to retry on after ``failure``, or None (denial counted)."""
        reason, denial = retry_reason(failure, replayable=replayable)
        if reason is not None:
            if len(tried) >= MAX_ATTEMPTS:
                denial = "attempts"
            else:
                backend, _why = self.guard.pick(self.config, pool, request, tried)
                if backend is None:
                    denial = "no_backend"
                elif not budget.try_withdraw(ratio):
                    denial = "budget"
                else:
                    if self.metrics is not None:
                        self.metrics.retry(reason)
                    return self.guard.lease(self.config, backend)
        if denial is not None and self.metrics is not None:
            self.metrics.retry_denial(denial)
        return None

    async def _buffer_body(self, request: DownstreamRequest) -> list[bytes]:
        """Read a small declared-length request body into memory so attempts can replay it."""
        assert request.body is not None
        perf = self.config.performance
        body = limited_body(request.body, limit=perf.max_request_body_bytes, declared=request.content_length,
                            idle_timeout=perf.client_body_idle_timeout_ms / 1000)
        return [chunk async for chunk in body]

    async def _hedged(self, ctx: RequestContext, pool: PoolRuntime, lease: BackendLease, tried: list[BackendRuntime]) -> None:
        """The primary attempt on ``lease`` and, if no response head came within
        ``hedging.delay_ms``, a hedge on another backend; the first head wins and the other
        attempt is cancelled through its cancel scope. Raises the primary's failure when
        every attempt failed."""
        race = HedgeRace()
        leases = [lease]

        async def run(index: int, attempt: BackendLease) -> None:
            with trio.CancelScope() as scope:
                race.start(index, scope)
                try:
                    await self._attempt(ctx, attempt, None, race, index)
                except Exception as exc:
                    race.failed(index, exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, lease)
            with trio.move_on_after(self.config.resilience.hedging.delay_ms / 1000):
                await race.settled.wait()
            if not race.settled.is_set():
                backend, _why = self.guard.pick(self.config, pool, ctx.request, tried)
                if backend is not None:
                    hedge = self.guard.lease(self.config, backend)
                    leases.append(hedge)
                    tried.append(backend)
                    if self.metrics is not None:
                        self.metrics.hedge("triggered")
                    log.debug("hedging %s %s on %s/%s", ctx.request.method.decode(), ctx.request.path.decode("latin-1"), backend.pool, backend.id)
                    nursery.start_soon(run, 1, hedge)
        if len(leases) > 1 and self.metrics is not None:
            if race.winner == 1:
                self.metrics.hedge("won")
            else:
                self.metrics.hedge("wasted")
                if race.winner == 0:
                    self.metrics.hedge("primary_won")
        if race.winner is not None:
            ctx.lease = leases[race.winner]
            ctx.backend = leases[race.winner].backend.id
            if race.winner in race.errors:
                raise race.errors[race.winner]
            return
        raise race.errors.get(0) or next(iter(race.errors.values()))

    async def _attempt(
        self, ctx: RequestContext, lease: BackendLease, chunks: list[bytes] | None, race: HedgeRace | None = None, index: int = 0
    ) -> None:
        """One exchange on ``lease``'s backend, relayed to the client unless ``race`` was won
        by another attempt first; the lease is finished whatever happens."""
        perf = self.config.performance
        backend = lease.backend
        failure: BaseException | None = None
        try:
            outgoing = upstream_request(ctx, backend, chunks)
            lease.begin()
            # trio.fail_after without its generator context manager (once per request)
            total_scope = trio.CancelScope(deadline=trio.current_time() + perf.backend_total_request_timeout_ms / 1000)
            with total_scope:
                async with self.upstream.exchange(
                    backend.connect_target,
                    outgoing,
                    connect_timeout=perf.backend_connect_timeout_ms / 1000,
                    response_timeout=perf.backend_timeout_ms / 1000,
                ) as response:
                    lease.response_started(response.status)
                    protocol = _UPSTREAM_PROTOCOLS.get(response.http_version, response.http_version)
                    if self.metrics is not None:
                        self.metrics.upstream_protocol(backend.pool, protocol)
                    if race is not None and not race.claim(index):
                        return
                    ctx.upstream_protocol = protocol
                    sink = ctx.sink
                    assert sink is not None
                    await relay_response(perf, ctx.request.method, response, sink)
            if total_scope.cancelled_caught:
                raise trio.TooSlowError
        except BaseException as exc:
            failure = exc
            raise
        finally:  # a lost hedge race or a cancelled attempt gives no verdict (proxy/lease.py)
            lease.finish(failure)
