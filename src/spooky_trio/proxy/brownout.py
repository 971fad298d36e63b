"""The ``brownout`` step: while brownout is on, a pool that is not a core route gets 503.

Spooky checks brownout after auth and before the scoped rate limits (``spooky-head.md``
section 2, "Order"), so it is its own step of the chain rather than the first check of
admission: a request that brownout and a rate limit would both refuse gets brownout's
503, as on Spooky. The on/off state itself (``resilience/brownout.py``) is still updated by
admission, each time a global inflight slot is taken or given back
(:class:`~spooky_trio.proxy.admission.OverloadGuard`), and the refusal is counted like
every shed (``spooky_overload_shed_by_reason_total{reason="brownout"}``).
"""

from __future__ import annotations

from spooky_trio.config import Config
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext


class Brownout:
    """Shed non-core pools while brownout is on (module docstring; only in the chain of a
    generation with ``brownout.enabled``). The pool is the one
    that serves the request (for a CONNECT tunnel, ``connect_pool``), which brownout's
    ``core_routes`` name."""

    name = "brownout"

    def __init__(self, config: Config, guard: OverloadGuard, connect_pool: str) -> None:
        self.core_routes = frozenset(config.resilience.brownout.core_routes)
        self.connect_pool = connect_pool
        self.guard = guard
        self.state = guard.state.brownout

    def on_request(self, ctx: RequestContext) -> Answer | None:
        if not self.state.active:
            return None
        pool = ctx.serving_pool
        name = pool.name if pool is not None and ctx.connect_target is None else self.connect_pool
        if name not in self.core_routes:
            assert ctx.config is not None
            raise self.guard.shed(ctx.config, "brownout")
        return None
