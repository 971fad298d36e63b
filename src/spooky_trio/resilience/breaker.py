"""Per-backend circuit breaker (``resilience.circuit_breaker``).

State machine (times from the injected clock, in seconds)::

    closed    --failure_threshold consecutive failures-->  open
    open      --open_ms elapsed (seen by the next permits())-->  half_open
    half_open --a probe succeeds-->  closed
    half_open --a probe fails-->  open (for another open_ms)

While half-open at most ``half_open_max_probes`` requests are let through at once; a probe
that ends without a verdict (the client went away, a hedge loser was cancelled) gives its
place back. A success in closed resets the consecutive-failure count.

The breaker lives in the backend's :class:`~spooky_trio.core.state.BackendState`, so a
config reload keeps it; thresholds come from the generation's config on every call.
Methods that change the state return the new state name (None when nothing changed) so
the caller can log and wake waiters.
"""

from __future__ import annotations

from spooky_trio.config import CircuitBreakerConfig

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """One backend's breaker; see the module docstring. ``cfg`` is ``resilience.circuit_breaker``."""

    __slots__ = ("state", "failures", "opened_at", "probes", "opens")

    def __init__(self) -> None:
        self.state = CLOSED
        #: consecutive failures while closed
        self.failures = 0
        #: clock time the breaker last opened
        self.opened_at = 0.0
        #: probes in flight while half-open
        self.probes = 0
        #: how many times it opened (the control API shows it)
        self.opens = 0

    def permits(self, now: float, cfg: CircuitBreakerConfig) -> bool:
        """May a request go to this backend at ``now``? Moves open -> half_open once
        ``open_ms`` has passed (use :meth:`transitioned` to learn it did)."""
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN:
            if now - self.opened_at < cfg.open_ms / 1000:
                return False
            self.state = HALF_OPEN
            self.probes = 0
        return self.probes < cfg.half_open_max_probes

    def begin(self) -> bool:
        """A request is sent (after :meth:`permits` said yes). Returns True when it is a
        half-open probe, which the caller hands back to :meth:`success`, :meth:`failure` or
        :meth:`abandon`."""
        if self.state is HALF_OPEN:
            self.probes += 1
            return True
        return False

    def success(self, probe: bool) -> str | None:
        """The backend answered (not a 5xx). Returns ``closed`` when that closed the breaker."""
        if probe:
            self.probes = max(0, self.probes - 1)  # a probe of an earlier half-open phase may end late
        if self.state is HALF_OPEN:
            self.state = CLOSED
            self.failures = 0
            return CLOSED
        if self.failures:
            self.failures = 0
        return None

    def failure(self, probe: bool, now: float, cfg: CircuitBreakerConfig) -> str | None:
        """The backend failed (connect, timeout, protocol, 5xx). Returns ``open`` when that
        opened the breaker."""
        if probe:
            self.probes = max(0, self.probes - 1)  # a probe of an earlier half-open phase may end late
        if self.state is HALF_OPEN:
            return self._open(now)
        if self.state is OPEN:
            return None  # an exchange that started before it opened
        self.failures += 1
        if self.failures >= cfg.failure_threshold:
            return self._open(now)
        return None

    def abandon(self, probe: bool) -> None:
        """The request ended without a verdict on the backend."""
        if probe:
            self.probes = max(0, self.probes - 1)  # a probe of an earlier half-open phase may end late

    def _open(self, now: float) -> str:
        self.state = OPEN
        self.opened_at = now
        self.failures = 0
        self.opens += 1
        return OPEN

    def snapshot(self, now: float, cfg: CircuitBreakerConfig) -> dict[str, object]:
        """For the control API: state, consecutive failures, and seconds until half-open."""
        retry_in = None
        if self.state is OPEN:
            retry_in = round(max(0.0, self.opened_at + cfg.open_ms / 1000 - now), 3)
        return {"state": self.state, "consecutive_failures": self.failures, "opens": self.opens,
                "half_open_probes": self.probes, "half_open_in_seconds": retry_in}
