"""Long-lived per-backend state: health, ejection, in-flight count, latency, DNS target.

The :class:`StateStore` belongs to the Server, not to a Generation: entries are keyed by
``BackendRuntime.key`` (pool, id, scheme, host, port), so a reload that keeps a backend keeps
its health verdict, ejection, latency average and resolved address, and a reload that
changes its address starts it afresh. Everything here is plain synchronous Python driven by
an explicit ``now`` (the Trio clock in production, ``MockClock`` in tests).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Iterator

import attrs
import trio

from spooky_trio.auth.store import AuthStore
from spooky_trio.config import HealthCheckConfig
from spooky_trio.core.shadows import ShadowTasks
from spooky_trio.discovery.membership import DiscoveryState
from spooky_trio.health.active import ActiveHealth
from spooky_trio.health.passive import PassiveHealth, PassivePolicy
from spooky_trio.resilience.breaker import CircuitBreaker
from spooky_trio.resilience.limits import Slots
from spooky_trio.resilience.ratelimit import RateLimitState
from spooky_trio.resilience.state import ResilienceState
from spooky_trio.upstream import BackendTarget
from spooky_trio.upstream.errors import status_failure_reason
from spooky_trio.upstream.tls import ClientContexts

log = logging.getLogger("spooky.health")


@attrs.define
class Ewma:
    """A time-decayed exponentially weighted moving average.

    A sample taken ``dt`` seconds after the previous one gets weight ``1 - exp(-dt / tau)``,
    so an old average fades with age rather than with request count (a backend sampled long
    ago is judged mostly by its newest sample). Each sample weighs at least ``min_alpha`` so
    a burst of samples at one instant still moves the average.
    """

    tau: float = 10.0
    min_alpha: float = 0.1
    value: float | None = None
    last_update: float = 0.0

    def update(self, sample: float, now: float) -> float:
        """Fold ``sample`` in at time ``now``; returns the new average."""
        if self.value is None:
            self.value = sample
        else:
            alpha = max(self.min_alpha, 1.0 - math.exp(-max(0.0, now - self.last_update) / self.tau))
            self.value += alpha * (sample - self.value)
        self.last_update = now
        return self.value


@attrs.define(eq=False)
class BackendState:
    """Everything that must outlive a generation about one backend.

    ``active`` is None for a backend without a health_check (always actively healthy).
    ``connect_address`` is the address DNS refresh chose from ``addresses``, None until a
    refresh resolved the name (then the configured host is dialled). ``failures`` counts
    failure reasons from real traffic and from probes (see
    :data:`~spooky_trio.health.passive.FAILURE_REASONS`); ``dns_failures`` failed refreshes.
    """

    key: Hashable
    label: str
    on_change: Callable[[], None] = lambda: None
    in_flight: int = 0
    latency_ewma: Ewma = attrs.Factory(Ewma)
    active: ActiveHealth | None = None
    passive: PassiveHealth = attrs.Factory(PassiveHealth)
    failures: collections.Counter[str] = attrs.Factory(collections.Counter)
    connect_address: str | None = None
    addresses: frozenset[str] = frozenset()
    dns_failures: int = 0
    #: requests holding one of its ``per_backend_inflight_limit`` slots (resilience/limits.py)
    slots: Slots = attrs.Factory(Slots)
    #: its circuit breaker (resilience/breaker.py); here so that a reload keeps it
    breaker: CircuitBreaker = attrs.Factory(CircuitBreaker)
    _target_cache: tuple[BackendTarget, BackendTarget] | None = None

    def connect_target(self, configured: BackendTarget) -> BackendTarget:
        """``configured`` redirected to ``connect_address`` (the same object while it holds)."""
        if self.connect_address is None:
            return configured
        cached = self._target_cache
        if cached is not None and cached[0] is configured and cached[1].connect_host == self.connect_address:
            return cached[1]
        target = attrs.evolve(configured, connect_host=self.connect_address)
        self._target_cache = (configured, target)
        return target

    # -- what balancers read --

    @property
    def latency(self) -> float | None:
        """Smoothed time to response headers (seconds), None before the first sample."""
        return self.latency_ewma.value

    @property
    def healthy(self) -> bool:
        """The active-check verdict (True without a health_check)."""
        return self.active is None or self.active.healthy

    def available(self, now: float) -> bool:
        """May take new requests: actively healthy and not passively ejected at ``now``."""
        return self.healthy and not self.passive.ejected(now)

    # -- configuration (each generation build) --

    def configure(self, health_check: HealthCheckConfig | None) -> None:
        """Apply a backend's ``health_check`` (or None); keeps the current verdicts."""
        if health_check is None:
            self.active = None
            self.passive.policy = PassivePolicy()
            return
        self.passive.policy = PassivePolicy(health_check.failure_threshold, health_check.cooldown_ms / 1000)
        if self.active is None:
            self.active = ActiveHealth(health_check.failure_threshold, health_check.success_threshold)
        else:
            self.active.failure_threshold = health_check.failure_threshold
            self.active.success_threshold = health_check.success_threshold

    # -- recording outcomes --

    def record_probe(self, reason: str | None, now: float) -> bool:
        """An active probe's result (None: success). Returns True when it made the backend unhealthy."""
        if reason is not None:
            self.failures[reason] += 1
        if self.active is None or not self.active.record(reason is None):
            return False
        if self.active.healthy:
            log.info("backend %s is healthy again (%d good probes)", self.label, self.active.success_threshold)
        else:
            log.warning("backend %s is unhealthy (%d failed probes, last: %s)", self.label, self.active.failure_threshold, reason)
        self.on_change()
        return not self.active.healthy

    def record_failure(self, reason: str, now: float) -> None:
        """A request to the backend failed for ``reason`` (``5xx``, ``timeout``, ``transport``, ``tls``)."""
        self.failures[reason] += 1
        if self.passive.record_failure(now):
            log.warning("backend %s ejected for %gs after failure (%s)", self.label, self.passive.policy.cooldown, reason)
            self.on_change()

    def record_success(self, now: float) -> None:
        """A request to the backend got a non-5xx answer."""
        if self.passive.record_success(now):
            log.info("backend %s restored after its ejection", self.label)
            self.on_change()

    def record_status(self, status: int) -> None:
        """A backend's answer: a 5xx counts as a ``5xx`` failure, any other status as a success."""
        reason = status_failure_reason(status)
        if reason is None:
            self.record_success(trio.current_time())
        else:
            self.record_failure(reason, trio.current_time())


class StateStore:
    """Backend states by identity; one per Server, surviving reloads.

    :meth:`wait_for` lets tests and the control API wait for a transition without polling:
    every availability change (probe verdict, ejection, restoration, circuit breaker), every
    DNS-driven address change, every change of a pool's backends (:meth:`notify`) and the overload events of ``resilience`` (a global inflight
    slot freed, brownout on/off, route queue entry/exit) wake waiters.
    """

    def __init__(self) -> None:
        self._states: dict[Hashable, BackendState] = {}
        self._changed: trio.Event | None = None
        #: process-wide overload state (inflight counts, admission, brownout, retry budgets)
        self.resilience = ResilienceState(on_change=self._notify)
        #: backend TLS contexts by trust-material content: a reload re-reads the CA files and
        #: keeps the same context (so the same pooled connections) while they are unchanged
        self.client_tls = ClientContexts()
        #: scoped rate limits: buckets by rule identity (an unchanged rule keeps them across
        #: a reload) and the Redis stores of the live generations
        self.rate_limits = RateLimitState()
        #: the auth layer's JWKS caches, discovery documents and HTTP clients (its task:
        #: ``AuthStore.run``, started by the server)
        self.auth = AuthStore()
        #: the pools' dynamic backends: discovery sources' last good sets, the admin API's
        #: backends (discovery/membership.py; the sources' tasks: ``DiscoveryService.run``)
        self.discovery = DiscoveryState()
        #: the nursery of traffic_policy mirror copies (its task: ``ShadowTasks.run``, started
        #: by the server; ``core/shadows.py``)
        self.shadows = ShadowTasks()

    def backend(self, key: Hashable, label: str) -> BackendState:
        """The state of backend ``key``, created (healthy, unsampled) on first use."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = BackendState(key=key, label=label, on_change=self._notify)
        return state

    def get(self, key: Hashable) -> BackendState | None:
        """The state of ``key`` if it was ever created."""
        return self._states.get(key)

    def forget(self, keys: Iterable[Hashable]) -> None:
        """Drop the states of ``keys`` (discovered backends no live generation has any more:
        requests still holding one keep their object; one that comes back starts afresh)."""
        for key in keys:
            self._states.pop(key, None)

    def __iter__(self) -> Iterator[BackendState]:
        return iter(list(self._states.values()))

    def notify(self) -> None:
        """Wake :meth:`wait_for` waiters: something they may wait for changed (a pool's
        backends after a discovery or admin change)."""
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true, re-checking it after every state change."""
        while not predicate():
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()
