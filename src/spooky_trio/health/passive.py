"""Passive health (outlier detection): real traffic's failures eject a backend for a while.

State machine per backend (times from the injected clock, in seconds)::

    serving --failure_threshold consecutive failures--> ejected (for cooldown)
    ejected --cooldown elapsed--> probation (serving again)
    probation --first success--> serving        (logged: restored)
    probation --first failure--> ejected again  (one failure suffices: it just failed)

A success resets the consecutive-failure count. Outcomes that arrive while the backend is
ejected (requests that were already in flight) are counted by reason but do not change the
state: the cooldown is what gives a struggling backend room to recover.
"""

from __future__ import annotations

import attrs

#: failure reasons recorded per backend (``spooky_health_failures_total{reason}``); active
#: probes add ``status`` (a non-2xx/3xx answer that is not a 5xx, e.g. 404 on the health path)
FAILURE_REASONS = ("5xx", "timeout", "transport", "tls", "status")

#: used when a backend has no health_check block: the defaults of an omitted block's fields,
#: so a backend ejects alike whether or not it is also actively probed
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_COOLDOWN_S = 5.0


@attrs.frozen
class PassivePolicy:
    """Consecutive failures that eject, and for how long (seconds)."""

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    cooldown: float = DEFAULT_COOLDOWN_S


@attrs.define
class PassiveHealth:
    """The outlier-detection state machine of one backend (see the module docstring)."""

    policy: PassivePolicy = attrs.Factory(PassivePolicy)
    consecutive_failures: int = 0
    #: clock time the current ejection ends; None when never ejected
    ejected_until: float | None = None
    probation: bool = False
    ejections: int = 0

    def ejected(self, now: float) -> bool:
        """True while an ejection's cooldown runs."""
        return self.ejected_until is not None and now < self.ejected_until

    def record_failure(self, now: float) -> bool:
        """Count a failed exchange at ``now``. Returns True when it ejected the backend."""
        if self.ejected(now):
            return False
        self.consecutive_failures += 1
        if not self.probation and self.consecutive_failures < self.policy.failure_threshold:
            return False
        self.ejected_until = now + self.policy.cooldown
        self.consecutive_failures = 0
        self.probation = True
        self.ejections += 1
        return True

    def record_success(self, now: float) -> bool:
        """Count a good exchange at ``now``. Returns True when it ended a probation."""
        if self.ejected(now):
            return False
        self.consecutive_failures = 0
        if self.probation:
            self.probation = False
            return True
        return False
