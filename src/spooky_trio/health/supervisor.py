"""The background nursery's owner: health checkers and DNS refreshers for the live backends.

One task per actively checked backend and one per hostname backend when DNS refresh is on.
:meth:`HealthSupervisor.apply` reconciles the running tasks with a set of backends (those
of every live generation: the stable one and a canary): a task whose backend and settings
are unchanged keeps running (its probe rhythm and streaks are not reset), others are
cancelled or started. The serving layer calls :meth:`run` with the first generation's
backends and :meth:`apply` after each reload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable

import dns.asyncresolver
import trio

from spooky_trio.config import HealthCheckConfig, PerformanceConfig
from spooky_trio.config.address import is_ip_literal
from spooky_trio.health.active import HealthChecker
from spooky_trio.health.dns import DnsRefresher, make_resolver
from spooky_trio.health.targets import CheckedBackend, HealthMetrics
from spooky_trio.upstream import UpstreamPool

log = logging.getLogger("spooky.health")

#: a task factory: run until cancelled, calling task_status.started() once serving
_TaskFactory = Callable[[trio.TaskStatus[None]], Awaitable[None]]


class HealthSupervisor:
    """Runs health checkers and DNS refreshers; see the module docstring."""

    def __init__(self, upstream: UpstreamPool, metrics: HealthMetrics | None = None) -> None:
        self.upstream = upstream
        #: passed to every checker and refresher (probe and DNS counters); may be None
        self.metrics = metrics
        self._nursery: trio.Nursery | None = None
        #: task identity -> (settings it was started with, its cancel scope)
        self._tasks: dict[Hashable, tuple[Hashable, trio.CancelScope]] = {}

    @property
    def task_count(self) -> int:
        """Checker and refresher tasks currently running."""
        return len(self._tasks)

    async def run(
        self, backends: Iterable[CheckedBackend], performance: PerformanceConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the background tasks until cancelled. Started once the first DNS resolutions
        finished (each bounded by the resolver lifetime), so the first requests use them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.apply(backends, performance)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._tasks.clear()

    async def apply(self, backends: Iterable[CheckedBackend], performance: PerformanceConfig) -> None:
        """Make the running tasks match ``backends`` under ``performance`` (the DNS refresh
        settings; see the module docstring). A backend listed twice (a canary shares it with
        the stable generation) runs one task with the settings of its last entry."""
        if self._nursery is None:
            raise RuntimeError("HealthSupervisor.run() is not running")
        wanted = self._wanted(backends, performance)
        for key in list(self._tasks):
            settings, scope = self._tasks[key]
            if key not in wanted or wanted[key][0] != settings:
                scope.cancel()
                del self._tasks[key]
        async with trio.open_nursery() as starters:  # first DNS resolutions run concurrently
            for key, (settings, factory) in wanted.items():
                if key not in self._tasks:
                    starters.start_soon(self._nursery.start, self._supervised, key, settings, factory)

    def _wanted(self, backends: Iterable[CheckedBackend], perf: PerformanceConfig) -> dict[Hashable, tuple[Hashable, _TaskFactory]]:
        wanted: dict[Hashable, tuple[Hashable, _TaskFactory]] = {}
        resolver = None
        for backend in backends:
            if backend.health_check is not None:
                settings: Hashable = (backend.health_check, backend.authority, backend.target)
                wanted[("health", backend.key)] = (settings, self._checker(backend, backend.health_check))
            if perf.backend_dns_refresh_enabled and not is_ip_literal(backend.target.host):
                if resolver is None:
                    resolver = self._resolver(perf)
                    if resolver is None:
                        continue
                settings = (perf.backend_dns_refresh_interval_ms, tuple(perf.backend_dns_nameservers))
                wanted[("dns", backend.key)] = (settings, self._refresher(backend, resolver, perf.backend_dns_refresh_interval_ms / 1000))
        return wanted

    @staticmethod
    def _resolver(perf: PerformanceConfig) -> dns.asyncresolver.Resolver | None:
        # a query may take up to one interval, within [1 s, 5 s]: long enough for a slow
        # resolver, short enough that startup (which waits for the first answer) stays quick
        lifetime = min(5.0, max(1.0, perf.backend_dns_refresh_interval_ms / 1000))
        try:
            return make_resolver(perf.backend_dns_nameservers, lifetime)
        except Exception as exc:  # no resolv.conf: serve with the system lookups at connect time
            log.error("DNS refresh disabled: cannot configure a resolver: %s", exc)
            return None

    def _checker(self, backend: CheckedBackend, check: HealthCheckConfig) -> _TaskFactory:
        checker = HealthChecker(
            state=backend.state,
            check=check,
            authority=backend.authority,
            target=lambda: backend.connect_target,
            upstream=self.upstream,
            metrics=self.metrics,
        )

        async def run(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await checker.run()

        return run

    def _refresher(self, backend: CheckedBackend, resolver: dns.asyncresolver.Resolver, interval: float) -> _TaskFactory:
        refresher = DnsRefresher(state=backend.state, host=backend.target.host, resolver=resolver, interval=interval, metrics=self.metrics)

        async def run(task_status: trio.TaskStatus[None]) -> None:
            await refresher.run(task_status=task_status)

        return run

    async def _supervised(self, key: Hashable, settings: Hashable, factory: _TaskFactory, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._tasks[key] = (settings, scope)
            try:
                await factory(task_status)
            finally:
                if self._tasks.get(key, (None, None))[1] is scope:
                    del self._tasks[key]
