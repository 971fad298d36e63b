"""The overload checks composed in their order, for one routed request.

``adaptive admission -> global/per-pool limits (route queues) -> per-backend limit -> circuit
breaker`` (brownout, which Spooky checks before the rate limits, is its own step of the chain:
``proxy/brownout.py``; its on/off state is updated here, after every slot taken or given
back); the first that refuses sheds the request with a
:class:`~spooky_trio.http.errors.ShedError` (503, ``Retry-After:
route_queue.shed_retry_after_seconds``, the reason in the body) and counts it in
``spooky_overload_shed_total`` and ``spooky_overload_shed_by_reason_total{reason}``.

The state these checks read and update is process-wide
(:class:`~spooky_trio.resilience.state.ResilienceState`, kept in the server's
:class:`~spooky_trio.core.state.StateStore` so a config reload keeps it); per-backend state
(inflight slots, breaker) lives in each backend's ``BackendState``. Every limit is read from
the config of the request's generation on each call. A backend is handed out as a
:class:`~spooky_trio.proxy.lease.BackendLease` that owns its slot.

A disabled mechanism costs one attribute test; the fast path (a slot is free) takes no
allocation beyond what the request already has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from spooky_trio.config import Config
from spooky_trio.core.generation import BackendRuntime, PoolRuntime
from spooky_trio.http.errors import ProxyError, ShedError
from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.proxy.lease import BackendLease
from spooky_trio.resilience.limits import Slots
from spooky_trio.resilience.state import ResilienceState

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.overload")

_MESSAGES = {
    "brownout": "brownout: only core routes are served right now",
    "adaptive_admission": "adaptive admission limit reached (upstream latency is high)",
    "global_inflight": "too many requests in flight",
    "upstream_inflight": "too many requests in flight to this upstream pool",
    "backend_inflight": "every backend of this pool is at its inflight limit",
    "route_queue": "the queue for this route is full",
    "circuit_open": "the circuit breaker of every backend of this pool is open",
}


class OverloadGuard:
    """Applies the checks for the pipeline; ``metrics`` may be None (tests)."""

    def __init__(self, state: ResilienceState, metrics: Metrics | None = None) -> None:
        self.state = state
        self.metrics = metrics

    # -- shedding --

    def shed(self, config: Config, reason: str) -> ShedError:
        """Count a shed request and build its error (the caller raises it)."""
        if self.metrics is not None:
            self.metrics.overload_shed(reason)
        return ShedError(reason, _MESSAGES[reason], config.resilience.route_queue.shed_retry_after_seconds)

    # -- admission: adaptive admission, global and pool slots (and the brownout state) --

    async def admit(self, config: Config, pool: str) -> Slots:
        """Take a global and a pool slot for a request routed to ``pool``, or raise
        :class:`ShedError`. Returns the pool's slots, to hand back to :meth:`release`."""
        state = self.state
        perf = config.performance
        res = config.resilience
        gslots = state.global_slots
        limit = perf.global_inflight_limit
        brownout = res.brownout  # checked by its own step (proxy/brownout.py); its state is updated here
        admission = res.adaptive_admission
        reason = "global_inflight"
        if admission.enabled:
            effective = state.admission.limit(admission)
            if effective < limit:
                limit, reason = effective, "adaptive_admission"
        if not gslots.try_acquire(limit) and not await self._wait(
            config, (gslots,), lambda: gslots.try_acquire(limit), "global", pool
        ):
            raise self.shed(config, reason)
        try:
            pslots = state.pool_slots.get(pool)
            if pslots is None:
                pslots = state.pool_slots[pool] = Slots()
            plimit = perf.per_upstream_inflight_limit
            if not pslots.try_acquire(plimit) and not await self._wait(
                config, (pslots,), lambda: pslots.try_acquire(plimit), "upstream", pool
            ):
                raise self.shed(config, "upstream_inflight")
        except BaseException:
            self._release_global(config)
            raise
        if brownout.enabled and state.brownout.update(gslots.held, perf.global_inflight_limit, brownout):
            self._brownout_changed(gslots.held, perf.global_inflight_limit)
        return pslots

    def release(self, config: Config, pslots: Slots) -> None:
        """Give back what :meth:`admit` took."""
        pslots.release()
        self._release_global(config)

    def _release_global(self, config: Config) -> None:
        state = self.state
        gslots = state.global_slots
        gslots.release()
        brownout = config.resilience.brownout
        if brownout.enabled and state.brownout.update(gslots.held, config.performance.global_inflight_limit, brownout):
            self._brownout_changed(gslots.held, config.performance.global_inflight_limit)
        else:
            state.on_change()  # waiters on the inflight count (drain, tests): a no-op without one

    def _brownout_changed(self, inflight: int, limit: int) -> None:
        if self.state.brownout.active:
            log.warning("brownout on: %d of %d requests in flight; non-core routes get 503", inflight, limit)
        else:
            log.info("brownout off: %d of %d requests in flight", inflight, limit)
        self.state.on_change()

    async def _wait(self, config: Config, slots: Sequence[Slots], acquire: Callable[[], bool], scope: str, pool: str) -> bool:
        """The micro-wait: queue for up to ``inflight_acquire_wait_ms``, calling ``acquire``
        after each release of one of ``slots`` until it succeeds. False when no wait is
        configured or it expired; sheds ``route_queue`` when the queue is full."""
        wait_ms = config.performance.inflight_acquire_wait_ms
        if wait_ms <= 0 or not slots:
            return False
        rq = config.resilience.route_queue
        queues = self.state.queues
        if not queues.try_enter(pool, rq):
            raise self.shed(config, "route_queue")
        self.state.on_change()
        try:
            with trio.move_on_after(wait_ms / 1000):
                while True:
                    await _any_release(slots)
                    if acquire():
                        if self.metrics is not None:
                            self.metrics.inflight_wait_admit(scope)
                        return True
            return False
        finally:
            queues.leave(pool)
            self.state.on_change()

    # -- backend choice: per-backend limit, then the breaker --

    async def choose(self, config: Config, pool: PoolRuntime, request: DownstreamRequest, exclude: Sequence[BackendRuntime] = ()) -> BackendLease:
        """Pick a backend of ``pool`` for ``request`` among the available ones not in
        ``exclude`` and lease one of its slots; the balancer only sees backends under
        ``per_backend_inflight_limit`` whose breaker lets a request through. Raises
        :class:`ShedError` (``backend_inflight``, ``circuit_open``) or a 503 ProxyError when
        no backend is available at all."""
        backend, reason = self.pick(config, pool, request, exclude)
        if backend is None and reason == "backend_inflight":
            now = trio.current_time()
            blocked = [b.state.slots for b in pool.backends if b.state.available(now) and not _is_in(b, exclude)]
            found: list[BackendRuntime] = []

            def acquire() -> bool:
                nonlocal reason
                picked, reason = self.pick(config, pool, request, exclude)
                if picked is not None:
                    found.append(picked)
                return picked is not None

            if await self._wait(config, blocked, acquire, "backend", pool.name):
                backend = found[0]
        if backend is None:
            if reason is None:
                raise ProxyError(503, "no_healthy_backend", f"pool {pool.name!r} has no healthy backend right now")
            if reason == "circuit_open" and self.metrics is not None:
                self.metrics.circuit_breaker_rejected()
            raise self.shed(config, reason)
        return self.lease(config, backend)

    def lease(self, config: Config, backend: BackendRuntime) -> BackendLease:
        """Take one of ``backend``'s slots (the caller checked its limit: :meth:`pick`)."""
        backend.state.slots.held += 1
        return BackendLease(backend, config, self.state, self.metrics)

    def pick(
        self, config: Config, pool: PoolRuntime, request: DownstreamRequest, exclude: Sequence[BackendRuntime] = ()
    ) -> tuple[BackendRuntime | None, str | None]:
        """(backend, None), or (None, why: ``backend_inflight``, ``circuit_open``, or None when
        no backend is available). Takes no slot."""
        now = trio.current_time()
        limit = config.performance.per_backend_inflight_limit
        cb = config.resilience.circuit_breaker
        breaker_on = cb.enabled
        candidates = []
        at_limit = broken = False
        for index, backend in enumerate(pool.backends):
            state = backend.state
            if not state.available(now) or (exclude and _is_in(backend, exclude)):
                continue
            if state.slots.held >= limit:
                at_limit = True
                continue
            if breaker_on:
                breaker = state.breaker
                before = breaker.state
                permits = breaker.permits(now, cb)
                if breaker.state is not before:
                    log.info("circuit breaker of %s half-open: probing with up to %d request(s)", state.label, cb.half_open_max_probes)
                    state.on_change()
                if not permits:
                    broken = True
                    continue
            candidates.append(index)
        if candidates:
            return pool.backends[pool.balancer.choose(candidates, request)], None
        return None, "backend_inflight" if at_limit else "circuit_open" if broken else None

    # -- outcomes --

    def latency_sample(self, config: Config, latency_ms: float) -> None:
        """Feed adaptive admission with a time-to-response-head sample."""
        admission = config.resilience.adaptive_admission
        if admission.enabled:
            self.state.admission.observe(latency_ms, admission)


def _is_in(backend: BackendRuntime, backends: Sequence[BackendRuntime]) -> bool:
    return any(backend is other for other in backends)


async def _any_release(slots: Sequence[Slots]) -> None:
    """Return after any of ``slots`` released a slot."""
    if len(slots) == 1:
        await slots[0].wait_release()
        return
    async with trio.open_nursery() as nursery:
        async def one(s: Slots) -> None:
            await s.wait_release()
            nursery.cancel_scope.cancel()

        for s in slots:
            nursery.start_soon(one, s)

