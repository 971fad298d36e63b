"""The ``fault`` step: traffic_policy ``fault`` of the pool the route chose, a chaos-testing
tool (extensions.md section 1; docs/traffic-policy.md).

After the plugin request hooks and before the rewrites and the split (section 0): a request
drawn for ``delay`` (``percent`` of them) waits ``fixed_ms``; one drawn for ``abort`` is
answered ``status`` by the proxy (after its delay, when drawn for both). With
``header_control: true`` (off by default: a client must not be able to slow or fail
requests on a production pool) ``x-spooky-fault-delay-ms: <ms>`` (at most 60000) and
``x-spooky-fault-abort: <status>`` (200-599) force a fault whatever the percents (and are
removed from the request, valid or not, so the backend never sees them). A request is in a fault from its delay's
start to its abort; at most ``max_active`` are at once, beyond which no fault is injected
(``spooky_fault_max_active_skips_total``).

An abort is the proxy's own answer (``reason`` ``fault_abort``, body ``503 Service
Unavailable: fault injected (fault_abort)``): no backend lease exists yet, so passive
health, circuit breakers, retries and the upstream metrics never see it, and it is not
counted as a refusal. Each injected fault is counted (``spooky_fault_injections_total``)
and shown in the access log's ``fault`` field (``delay:200ms``, ``abort:503``).

Draws use the generation's seeded RNG of the fault decision (``proxy/draws.py``).
"""

from __future__ import annotations

import trio

from spooky_trio.config import Config
from spooky_trio.config.schema_traffic import FaultConfig
from spooky_trio.http.errors import ErrorResponse
from spooky_trio.observability.traffic_metrics import TrafficCounters
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.draws import basis_points, policy_rng

DELAY_HEADER = b"x-spooky-fault-delay-ms"
ABORT_HEADER = b"x-spooky-fault-abort"
#: the longest delay a client may ask for with ``header_control``
MAX_HEADER_DELAY_MS = 60000
_HEADERS = (DELAY_HEADER, ABORT_HEADER)


class PoolFault:
    """A pool's ``fault``, compiled."""

    __slots__ = ("delay_ms", "delay_bp", "abort_status", "abort_bp", "header_control", "max_active", "active")

    def __init__(self, config: FaultConfig) -> None:
        self.delay_ms = config.delay.fixed_ms if config.delay is not None else 0
        self.delay_bp = basis_points(config.delay.percent) if config.delay is not None else 0
        self.abort_status = config.abort.status if config.abort is not None else 0
        self.abort_bp = basis_points(config.abort.percent) if config.abort is not None else 0
        self.header_control = config.header_control
        self.max_active = config.max_active
        #: requests of this pool in a fault now (this generation's)
        self.active = 0


def _header_int(headers: list[tuple[bytes, bytes]], name: bytes) -> int | None:
    for field, value in headers:
        if field == name:
            return int(value) if value.isdigit() and len(value) <= 6 else None
    return None


class Fault:
    """The fault step (module docstring); in the chain only when a pool has a ``fault``."""

    name = "fault"

    def __init__(self, config: Config, number: int, counters: TrafficCounters | None) -> None:
        self.pools = {
            name: PoolFault(pool.traffic_policy.fault)
            for name, pool in config.upstream.items()
            if pool.traffic_policy is not None and pool.traffic_policy.fault is not None and not pool.traffic_policy.answers_locally
        }
        self.rng = policy_rng(config, number, "fault")
        self.counters = counters

    def _decide(self, ctx: RequestContext, fault: PoolFault) -> tuple[int | None, int | None]:
        """(delay in ms, abort status): each None when not drawn."""
        delay = abort = None
        draw = self.rng.randrange
        if fault.delay_bp and draw(10000) < fault.delay_bp:
            delay = fault.delay_ms
        if fault.abort_bp and draw(10000) < fault.abort_bp:
            abort = fault.abort_status
        if fault.header_control:
            request = ctx.request
            if any(name in _HEADERS for name, _ in request.headers):
                forced_delay = _header_int(request.headers, DELAY_HEADER)
                forced_abort = _header_int(request.headers, ABORT_HEADER)
                request.headers = [(n, v) for n, v in request.headers if n not in _HEADERS]
                if forced_delay is not None:
                    delay = min(forced_delay, MAX_HEADER_DELAY_MS)
                if forced_abort is not None and 200 <= forced_abort <= 599:
                    abort = forced_abort
        return delay, abort

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        fault = self.pools.get(pool)
        if fault is None:
            return None
        delay, abort = self._decide(ctx, fault)
        if delay is None and abort is None:
            return None
        counters = self.counters
        if fault.active >= fault.max_active:
            if counters is not None:
                counters.fault_skips[pool] += 1
            return None
        fault.active += 1
        try:
            if delay is not None:
                ctx.fault = f"delay:{delay}ms"
                if counters is not None:
                    counters.faults[(pool, "delay")] += 1
                await trio.sleep(delay / 1000)
            if abort is None:
                return None
            ctx.fault = f"{ctx.fault}+abort:{abort}" if ctx.fault else f"abort:{abort}"
            if counters is not None:
                counters.faults[(pool, "abort")] += 1
            return Answer.from_error(ErrorResponse(abort, "fault_abort", "fault injected"), rejection=False)
        finally:
            fault.active -= 1
