"""Brownout (``resilience.brownout``): shed non-core pools while the process is nearly full.

The inflight percentage is the global inflight count over ``performance.global_inflight_limit``.
Brownout turns on when it reaches ``trigger_inflight_percent`` and off only once it has
fallen to ``recover_inflight_percent`` (hysteresis: between the two it keeps its state).
While on, requests routed to a pool not listed in ``core_routes`` get 503 + Retry-After
(names trimmed, blanks dropped, matched exactly as Spooky does; a name that matches no
pool is accepted and never matches).
"""

from __future__ import annotations

from spooky_trio.config import BrownoutConfig


class Brownout:
    """The on/off state; re-evaluated each time the inflight count changes."""

    __slots__ = ("active", "activations")

    def __init__(self) -> None:
        self.active = False
        #: how many times it turned on
        self.activations = 0

    def update(self, inflight: int, limit: int, cfg: BrownoutConfig) -> bool:
        """Re-evaluate for ``inflight`` of ``limit``; returns True when the state changed."""
        scaled = inflight * 100
        if self.active:
            if scaled <= cfg.recover_inflight_percent * limit:
                self.active = False
                return True
        elif scaled >= cfg.trigger_inflight_percent * limit:
            self.active = True
            self.activations += 1
            return True
        return False

    def sheds(self, pool: str, cfg: BrownoutConfig) -> bool:
        """While active: True for a pool that is not a core route."""
        return self.active and pool not in cfg.core_routes
