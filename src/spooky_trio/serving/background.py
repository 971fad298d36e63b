"""The process-wide background services of a Server, started once and following the live
generations after every reload.

```
upstream pool     h2 connection tasks, idle reaper; connections of removed backends drain
discovery         one task per discovery source of the live generations (file, DNS SRV,
                  etcd); a change of a pool's backends (a source, the admin API) refreshes
                  the live generations' pools (:meth:`Background.follow_membership`)
health supervisor probes and DNS refreshers of the live generations' backends
trace export      tracers of the live generations' tracing settings; the OTLP export task
auth store        JWKS refreshers and OIDC discovery of the live generations' auth settings
rate-limit stores one task per Redis store a live generation's chain uses
mirror copies     the shadow nursery: traffic_policy mirror copies (drained after the primaries)
plugin tasks      the background tasks of the live generations' plugin filters (one scope each)
```

Each one is started under the Server's root nursery by :meth:`Background.start` (in this
order, before any listener) and told the live generations by :meth:`Background.follow`
after a reload commits, a canary is dropped or promoted (``serving/reload.py``). It is a
module of its own, not part of ``serving/server.py``, since the trace export, the auth
store and the rate-limit stores joined the first two: the Server stays the root of the task
tree and the reload's stage/commit, and a new service of this kind is one edit here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence

import trio

from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.discovery.membership import CONFIG, source_key
from spooky_trio.discovery.service import DiscoveryService
from spooky_trio.health.supervisor import HealthSupervisor
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.tracing import Tracing
from spooky_trio.proxy.chain import Chain
from spooky_trio.proxy.plugin_tasks import PluginTasks
from spooky_trio.proxy.plugins import plugins_of
from spooky_trio.proxy.ratelimit import stores_of
from spooky_trio.upstream import UpstreamPool

log = logging.getLogger("spooky.discovery")


class Background:
    """The services of the module docstring; ``chain_for`` is the Proxy's (a generation's
    chain names the rate-limit stores it uses)."""

    def __init__(self, upstream: UpstreamPool, health: HealthSupervisor, tracing: Tracing, state: StateStore,
                 metrics: Metrics, chain_for: Callable[[Generation], Chain],
                 live: Callable[[], Sequence[Generation]] | None = None) -> None:
        self.upstream = upstream
        self.health = health
        self.tracing = tracing
        self.state = state
        self.metrics = metrics
        self.chain_for = chain_for
        #: the live generations (the reload manager's GenerationSet.live), for membership changes
        self.live = live
        #: the discovery nursery's owner (discovery/service.py)
        self.discovery = DiscoveryService(state.discovery, metrics)
        #: one follow at a time (a reload's, a membership change's): each reconciles tasks
        self._lock = trio.Lock()
        self._membership_changed = trio.Event()
        #: keys of the discovered and admin-added backends of the live generations
        self._dynamic: set[Hashable] = set()
        #: the plugins nursery (proxy/plugin_tasks.py)
        self.plugin_tasks = PluginTasks()

    async def start(self, nursery: trio.Nursery, generation: Generation) -> None:
        """Start every service under ``nursery``, following ``generation`` (the first one)."""
        await nursery.start(self.upstream.run)
        if self.live is not None:  # from now on a change of a pool's backends is noticed
            self.state.discovery.on_change = self._on_membership_change
        await nursery.start(self.discovery.run)  # discovery nursery: one task per source
        await self._follow_sources([generation])  # each source's first answer (bounded by its timeout_ms)
        generation.refresh()  # its pools as the sources answered, before any task reads them
        self._dynamic = {b.key for b in generation.backends() if b.origin != CONFIG}
        await nursery.start(self.health.run, generation.backends(), generation.config.performance)  # probes, DNS
        await nursery.start(self.tracing.run)  # OTLP export: drains the span queue in a worker thread
        await nursery.start(self.state.auth.run, self.metrics)  # auth nursery (auth/store.py)
        await nursery.start(self.state.rate_limits.stores.run)  # nursery of the shared rate-limit stores
        await nursery.start(self.state.shadows.run)  # nursery of the mirror copies (core/shadows.py)
        await self._follow_rate_limit_stores([generation])
        if self.live is not None:
            nursery.start_soon(self.follow_membership, self.live)
        await nursery.start(self.plugin_tasks.run)  # the plugins' background tasks
        self.plugin_tasks.follow(plugins_of(self.chain_for(generation)))

    async def follow(self, live: Sequence[Generation]) -> None:
        """Follow the ``live`` generations (the stable one first): discovery sources they
        name run, their pools take the current dynamic backends, probes of removed backends
        stop, new ones start, unchanged ones keep running; removed backends' connections
        drain; tracers, auth caches and rate-limit stores no live generation uses stop."""
        async with self._lock:
            await self._follow_sources(live)
            await self._refresh_pools(live)
            self.tracing.follow(generation.config.observability.tracing for generation in live)
            await self.health.apply([b for generation in live for b in generation.backends()], live[-1].config.performance)
            keep = set()
            for generation in live:
                for backend in generation.backends():
                    keep.add(backend.target)
                    keep.add(backend.connect_target)
            await self.upstream.retire(keep)
            self._forget_removed(live)
            self.state.auth.follow(generation.config for generation in live)
            await self._follow_rate_limit_stores(live)
            self.plugin_tasks.follow(plugins for generation in live for plugins in plugins_of(self.chain_for(generation)))

    async def follow_membership(self, live: Callable[[], Sequence[Generation]]) -> None:
        """Run until cancelled: after each change of a pool's dynamic backends (a discovery
        answer, the admin API), follow the live generations again (:meth:`follow`)."""
        while True:
            await self._membership_changed.wait()
            self._membership_changed = trio.Event()
            try:
                await self.follow(live())
            except Exception:  # noqa: BLE001 - the server keeps serving the sets it has; the next change retries
                log.exception("applying a change of the pools' backends failed")

    def _on_membership_change(self) -> None:
        self._membership_changed.set()  # (the event object is replaced after each wake-up)

    async def _follow_sources(self, live: Sequence[Generation]) -> None:
        sources = [(source_key(name, pool.config.discovery), pool.config.discovery)
                   for generation in live for name, pool in generation.pools.items() if pool.config.discovery is not None]
        await self.discovery.follow(sources, live[-1].config.performance.backend_dns_nameservers)

    async def _refresh_pools(self, live: Sequence[Generation]) -> None:
        """Give the live generations' pools their current dynamic backends. New backends'
        DNS refreshers and probes start first (a hostname backend takes requests once
        resolved, like a configured one at startup); then each pool swaps its set."""
        stale = [(generation, generation.stale_pools()) for generation in live]
        if not any(pools for _, pools in stale):
            return
        prepared = [backend for _, pools in stale for _, backends in pools for backend in backends]
        current = [backend for generation in live for backend in generation.backends()]
        await self.health.apply(current + prepared, live[-1].config.performance)
        for index, (generation, pools) in enumerate(stale):
            own = [backend for _, backends in pools for backend in backends]  # (targets carry this generation's TLS)
            generation.refresh(beside=live[0] if index else None, prepared=own)
        self.state.notify()

    def _forget_removed(self, live: Sequence[Generation]) -> None:
        """Drop the long-lived state of discovered and admin-added backends no live
        generation has (a config backend's state stays, as before discovery existed)."""
        keys = {backend.key for generation in live for backend in generation.backends()}
        self.state.forget(self._dynamic - keys)
        self._dynamic = {b.key for generation in live for b in generation.backends() if b.origin != CONFIG}
        self.state.discovery.retain(
            {name for generation in live for name in generation.pools},
            {source_key(name, pool.config.discovery) for generation in live
             for name, pool in generation.pools.items() if pool.config.discovery is not None},
        )

    async def _follow_rate_limit_stores(self, live: Sequence[Generation]) -> None:
        """Run the shared rate-limit stores the ``live`` generations use (each started after
        its first probe), stop the others."""
        used = [store for generation in live for store in stores_of(self.chain_for(generation))]
        await self.state.rate_limits.stores.follow(used)
