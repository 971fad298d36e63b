"""The process-wide background services of a Server, started once and following the live
generations after every reload.

```
upstream pool     h2 connection tasks, idle reaper; connections of removed backends drain
health supervisor probes and DNS refreshers of the live generations' backends
trace export      tracers of the live generations' tracing settings; the OTLP export task
auth store        JWKS refreshers and OIDC discovery of the live generations' auth settings
rate-limit stores one task per Redis store a live generation's chain uses
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

from collections.abc import Callable, Sequence

import trio

from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.health.supervisor import HealthSupervisor
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.tracing import Tracing
from spooky_trio.proxy.chain import Chain
from spooky_trio.proxy.plugin_tasks import PluginTasks
from spooky_trio.proxy.plugins import plugins_of
from spooky_trio.proxy.ratelimit import stores_of
from spooky_trio.upstream import UpstreamPool


class Background:
    """The services of the module docstring; ``chain_for`` is the Proxy's (a generation's
    chain names the rate-limit stores it uses)."""

    def __init__(self, upstream: UpstreamPool, health: HealthSupervisor, tracing: Tracing, state: StateStore,
                 metrics: Metrics, chain_for: Callable[[Generation], Chain]) -> None:
        self.upstream = upstream
        self.health = health
        self.tracing = tracing
        self.state = state
        self.metrics = metrics
        self.chain_for = chain_for
        #: the plugins nursery (proxy/plugin_tasks.py)
        self.plugin_tasks = PluginTasks()

    async def start(self, nursery: trio.Nursery, generation: Generation) -> None:
        """Start every service under ``nursery``, following ``generation`` (the first one)."""
        await nursery.start(self.upstream.run)
        await nursery.start(self.health.run, generation.backends(), generation.config.performance)  # probes, DNS
        await nursery.start(self.tracing.run)  # OTLP export: drains the span queue in a worker thread
        await nursery.start(self.state.auth.run, self.metrics)  # auth nursery (auth/store.py)
        await nursery.start(self.state.rate_limits.stores.run)  # nursery of the shared rate-limit stores
        await self._follow_rate_limit_stores([generation])
        await nursery.start(self.plugin_tasks.run)  # the plugins' background tasks
        self.plugin_tasks.follow(plugins_of(self.chain_for(generation)))

    async def follow(self, live: Sequence[Generation]) -> None:
        """Follow the ``live`` generations (the stable one last): probes of removed backends
        stop, new ones start, unchanged ones keep running; removed backends' connections
        drain; tracers, auth caches and rate-limit stores no live generation uses stop."""
        self.tracing.follow(generation.config.observability.tracing for generation in live)
        await self.health.apply([b for generation in live for b in generation.backends()], live[-1].config.performance)
        keep = set()
        for generation in live:
            for backend in generation.backends():
                keep.add(backend.target)
                keep.add(backend.connect_target)
        await self.upstream.retire(keep)
        self.state.auth.follow(generation.config for generation in live)
        await self._follow_rate_limit_stores(live)
        self.plugin_tasks.follow(plugins for generation in live for plugins in plugins_of(self.chain_for(generation)))

    async def _follow_rate_limit_stores(self, live: Sequence[Generation]) -> None:
        """Run the shared rate-limit stores the ``live`` generations use (each started after
        its first probe), stop the others."""
        used = [store for generation in live for store in stores_of(self.chain_for(generation))]
        await self.state.rate_limits.stores.follow(used)
