"""A backend lease: one slot of a backend, held for one attempt, and everything that attempt
teaches about the backend, recorded in one place.

:meth:`~spooky_trio.proxy.admission.OverloadGuard.choose` takes the slot (the backend's
``per_backend_inflight_limit``) and hands out a :class:`BackendLease`. The attempt that uses
it calls :meth:`BackendLease.begin` when the exchange starts (circuit-breaker probe, the
backend's in-flight count), :meth:`BackendLease.response_started` when the response head
arrives (latency sample for the backend's EWMA and for adaptive admission) and
:meth:`BackendLease.finish` when it ends, which in one call records the passive-health
verdict, the breaker verdict and the ``spooky_upstream_requests_total`` /
``spooky_backend_requests_total`` / latency metrics, and gives the slot back. A lease that
is never used (the request failed before its attempt) is given back by :meth:`release`;
both are idempotent, so the request's cleanup can always call :meth:`release`.

Verdicts: an upstream failure (``failure_reason`` of the exception: ``timeout``,
``transport``, ``tls``) counts against the backend; otherwise the status does (5xx is a
failure, anything else a success); an exception that says nothing about the backend (the
client went away) before a status arrived gives no verdict: the breaker's probe is abandoned
and passive health records nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from spooky_trio.config import CircuitBreakerConfig, Config
from spooky_trio.core.generation import BackendRuntime
from spooky_trio.resilience.breaker import CLOSED, OPEN
from spooky_trio.upstream.errors import failure_reason

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.resilience.state import ResilienceState

log = logging.getLogger("spooky.overload")


class BackendLease:
    """One held backend slot for one attempt (see the module docstring)."""

    __slots__ = ("backend", "_config", "_resilience", "_metrics", "_held", "_begun", "_probe", "_started", "status", "latency_ms")

    def __init__(self, backend: BackendRuntime, config: Config, resilience: ResilienceState, metrics: Metrics | None) -> None:
        self.backend = backend
        self._config = config
        self._resilience = resilience
        self._metrics = metrics
        self._held = True
        self._begun = False
        self._probe = False
        self._started = 0.0
        #: the response status once the head arrived
        self.status: int | None = None
        #: time to the response head, milliseconds
        self.latency_ms: float | None = None

    @property
    def held(self) -> bool:
        """The slot is still held (neither :meth:`finish` nor :meth:`release` ran)."""
        return self._held

    def begin(self) -> None:
        """The exchange starts: take a breaker probe slot if half-open, count it in flight."""
        state = self.backend.state
        if self._config.resilience.circuit_breaker.enabled:
            self._probe = state.breaker.begin()
        state.in_flight += 1
        self._begun = True
        self._started = trio.current_time()

    def response_started(self, status: int) -> None:
        """The response head arrived: record the latency sample."""
        now = trio.current_time()
        self.status = status
        seconds = now - self._started
        self.backend.state.latency_ewma.update(seconds, now)
        latency_ms = self.latency_ms = seconds * 1000
        admission = self._config.resilience.adaptive_admission
        if admission.enabled:
            self._resilience.admission.observe(latency_ms, admission)

    def finish(self, exc: BaseException | None = None) -> None:
        """The attempt ended (``exc``: how it failed, None when it completed). Records the
        verdicts and metrics (module docstring) and gives the slot back. Idempotent."""
        if not self._held:
            return
        self._held = False
        backend = self.backend
        state = backend.state
        try:
            if not self._begun:
                return
            state.in_flight -= 1
            status = self.status
            reason = failure_reason(exc) if exc is not None else None
            if reason is not None:
                state.record_failure(reason, trio.current_time())
                failed: bool | None = True
            elif status is not None:
                state.record_status(status)
                failed = status >= 500
            else:
                failed = None
            cb = self._config.resilience.circuit_breaker
            if cb.enabled:
                breaker_verdict(cb, backend, self._probe, failed)
            if self._metrics is not None and (reason is not None or status is not None):
                self._metrics.backend_exchange(backend.pool, backend.id, status, reason, self.latency_ms)
        finally:
            state.slots.release()

    def release(self) -> None:
        """Give the slot back without a verdict (an unused lease, or cleanup). Idempotent."""
        self.finish(None)


def breaker_verdict(cb: CircuitBreakerConfig, backend: BackendRuntime, probe: bool, failed: bool | None) -> None:
    """Record an attempt's verdict on ``backend``'s circuit breaker (``failed`` None: none;
    a probe taken is then abandoned). ``cb`` is ``resilience.circuit_breaker``."""
    state = backend.state
    breaker = state.breaker
    if failed is None:
        breaker.abandon(probe)
        return
    changed = breaker.failure(probe, trio.current_time(), cb) if failed else breaker.success(probe)
    if changed is OPEN:
        log.warning("circuit breaker of %s open for %gs after failures", state.label, cb.open_ms / 1000)
        state.on_change()
    elif changed is CLOSED:
        log.info("circuit breaker of %s closed: the probe succeeded", state.label)
        state.on_change()
