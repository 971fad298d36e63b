"""The server's watchdog service: ``resilience.watchdog`` started, retuned or stopped to
follow the serving config (at startup and after each reload that is not a canary).

The watchdog itself (``resilience/watchdog.py``) only sees the callables it is given; this
is where they are bound to a server: in-flight count, the request and timeout counters, and
readiness through ``server.serving`` (what ``Server.ready`` and ``/ready`` read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from prometheus_client import Counter

from spooky_trio.resilience.watchdog import Watchdog

if TYPE_CHECKING:
    from spooky_trio.serving.server import Server


class WatchdogService:
    """The watchdog of one server, in its own cancel scope under the server's nursery."""

    def __init__(self, server: Server) -> None:
        self._server = server
        #: the running watchdog, None while ``resilience.watchdog.enabled`` is false
        self.watchdog: Watchdog | None = None
        self._scope = trio.CancelScope()

    def follow(self, nursery: trio.Nursery) -> None:
        """Match the server's current config: start, retune or stop."""
        config = self._server.config
        settings = config.resilience.watchdog
        if settings.enabled and self.watchdog is None:
            self.watchdog = self._build()
            self._scope = trio.CancelScope()
            nursery.start_soon(self._run, self.watchdog, self._scope)
        elif settings.enabled and self.watchdog is not None:
            self.watchdog.config = settings
            self.watchdog.inflight_limit = config.performance.global_inflight_limit
        elif self.watchdog is not None:
            self._scope.cancel()
            self.watchdog = None

    def _build(self) -> Watchdog:
        server = self._server
        metrics = server.metrics

        def set_ready(ready: bool) -> None:
            if not server.draining:
                server.serving = ready

        def totals() -> tuple[float, float]:
            return _counter_value(metrics.requests), _counter_value(metrics.backend_timeouts)

        return Watchdog(
            server.config.resilience.watchdog,
            inflight=lambda: server.activity.count,
            inflight_limit=server.config.performance.global_inflight_limit,
            totals=totals,
            set_ready=set_ready,
            metrics=metrics,
        )

    @staticmethod
    async def _run(watchdog: Watchdog, scope: trio.CancelScope) -> None:
        with scope:
            await watchdog.run()


def _counter_value(counter: Counter) -> float:
    """The value of an unlabelled prometheus_client Counter (public collect() API)."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0
