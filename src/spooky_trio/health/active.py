"""Active health: one probe task per checked backend, and its threshold state machine.

A checked backend starts *healthy*: a config with checks serves at once, and a backend that
is actually down is found by its first ``failure_threshold`` probes (the first runs right at
startup) or, sooner, by passive detection on real traffic. Starting unhealthy would turn
every restart into an outage of ``success_threshold * interval`` for nothing.

``failure_threshold`` consecutive failed probes make it unhealthy; the checker then pauses
``cooldown_ms`` before probing again, and ``success_threshold`` consecutive good probes
make it healthy again. A probe is ``GET health_check.path`` through the shared
:class:`UpstreamPool` (HTTP/1.1 for ``http://`` backends, HTTP/2 for ``https://``), bounded
as a whole by ``timeout_ms``; a 2xx or 3xx status is a success.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from spooky_trio.config import HealthCheckConfig
from spooky_trio.health.targets import HealthMetrics, ProbeState
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream import BackendTarget, UpstreamPool
from spooky_trio.upstream.errors import failure_reason, status_failure_reason

log = logging.getLogger("spooky.health")

_USER_AGENT = b"spooky-trio-health-check"
#: a health body larger than this is not read to the end (the connection is then closed)
_MAX_DRAIN_BYTES = 64 * 1024


@attrs.define
class ActiveHealth:
    """Consecutive-probe thresholds of one backend. ``healthy`` starts True (module docstring)."""

    failure_threshold: int
    success_threshold: int
    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0

    def record(self, ok: bool) -> bool:
        """Count one probe result; returns True when ``healthy`` flipped."""
        if ok:
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if not self.healthy and self.consecutive_successes >= self.success_threshold:
                self.healthy = True
                return True
        else:
            self.consecutive_successes = 0
            self.consecutive_failures += 1
            if self.healthy and self.consecutive_failures >= self.failure_threshold:
                self.healthy = False
                return True
        return False


class HealthChecker:
    """Probes one backend forever; run it in the background nursery.

    ``target`` returns the backend's current connect target (it changes when DNS refresh
    moves the backend). ``check`` is the backend's ``HealthCheckConfig``.
    """

    def __init__(
        self,
        *,
        state: ProbeState,
        check: HealthCheckConfig,
        authority: bytes,
        target: Callable[[], BackendTarget],
        upstream: UpstreamPool,
        metrics: HealthMetrics | None = None,
    ) -> None:
        #: a :class:`~spooky_trio.observability.metrics.Metrics` (or None) counting probes
        self.metrics = metrics
        self.state = state
        self.check = check
        self.authority = authority
        self.target = target
        self.upstream = upstream

    async def run(self) -> None:
        """Probe, record, wait ``interval`` (``cooldown_ms`` right after going unhealthy); repeat."""
        while True:
            reason = await self.probe()
            if self.metrics is not None:
                self.metrics.health_probe(reason)
            went_down = self.state.record_probe(reason, trio.current_time())
            delay = self.check.cooldown_ms if went_down else self.check.interval
            await trio.sleep(delay / 1000)

    async def probe(self) -> str | None:
        """One probe: None on success, else the failure reason (``timeout``, ``5xx``, ...)."""
        target = self.target()
        timeout = self.check.timeout_ms / 1000
        request = UpstreamRequest(
            method=b"GET",
            target=self.check.path.encode("ascii"),
            authority=self.authority,
            headers=[(b"user-agent", _USER_AGENT)],
            scheme=target.scheme.encode("ascii"),
        )
        status: int | None = None
        with trio.move_on_after(timeout):
            try:
                async with self.upstream.exchange(target, request, connect_timeout=timeout, response_timeout=timeout) as response:
                    status = response.status
                    drained = 0
                    # read the (small) body so an HTTP/1.1 connection can go back to the pool
                    while drained <= _MAX_DRAIN_BYTES and (chunk := await response.receive()):
                        drained += len(chunk)
            except Exception as exc:
                reason = failure_reason(exc)
                if reason is None:  # not an upstream failure: a bug; keep probing, loudly
                    log.exception("health probe of %s failed unexpectedly", self.state.label)
                    return "transport"
                log.debug("health probe of %s failed: %s: %s", self.state.label, reason, exc)
                return reason
            if 200 <= status < 400:
                return None
            log.debug("health probe of %s answered %d", self.state.label, status)
            return status_failure_reason(status) or "status"
        log.debug("health probe of %s timed out after %gs", self.state.label, timeout)
        return "timeout"
