"""The process-wide overload state: inflight counts, adaptive admission, brownout, route
queues and retry budgets.

It lives in the server's :class:`~spooky_trio.core.state.StateStore`, so a config reload
keeps counts, the admission limit, the brownout state and the retry budgets; the checks that
read and update it are composed for each request by ``proxy/admission.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from spooky_trio.resilience.admission import AdaptiveAdmission
from spooky_trio.resilience.brownout import Brownout
from spooky_trio.resilience.limits import RouteQueues, Slots
from spooky_trio.resilience.retry import RetryBudgets


class ResilienceState:
    """Process-wide overload state that survives reloads (see the module docstring).

    ``on_change`` is called when the global inflight count falls, brownout turns on or off,
    and a request starts or ends a wait in a route queue (``StateStore.wait_for`` wakes)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.global_slots = Slots()
        self.pool_slots: dict[str, Slots] = {}
        self.admission = AdaptiveAdmission()
        self.brownout = Brownout()
        self.queues = RouteQueues()
        self.budgets = RetryBudgets()
        self.on_change = on_change
