"""Retries (``resilience.retry_budget``): when a retry is safe, and the budget that bounds them.

Safe (:func:`retry_reason`): a failed attempt is retried, on a different backend, only when

* the backend never got the request: the connection or TLS handshake failed
  (``connect_failed``/``tls_failed``; any method, the request body was not read yet), or
* the method is idempotent and the request is fully known and replayable (no body, or a
  body of at most :data:`REPLAY_BUFFER_BYTES` with a declared length that was buffered),
  and no response head arrived (``response_timeout``, ``protocol_error``...).

Nothing is retried once the backend's response head arrived (a 5xx is an answer, and its
bytes may already be on their way to the client).

Budget (:class:`RetryBudget`): every primary request earns ``ratio_percent`` hundredths of
a retry, every retry spends one; the credit is capped at ``ratio_percent`` retries (what 100
primaries earn) and starts full. So over any stretch of traffic, retries stay within about
``ratio_percent`` per 100 requests plus that initial burst, and ``ratio_percent: 0`` means no
retries. A request whose pool is named in ``per_route_ratio_percent`` (the pool that routed
it, matched exactly as Spooky does; spooky-head.md section 4) uses that pool's own budget
with that ratio instead of the global one.
"""

from __future__ import annotations

from spooky_trio.config import RetryBudgetConfig
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamError

#: methods whose repetition has the effect of one request (RFC 9110 9.2.2)
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: request bodies up to this size (with a declared length, idempotent methods) are buffered so
#: that a failed attempt can be replayed; larger ones stream and are retried only on connect failure
REPLAY_BUFFER_BYTES = 64 * 1024

#: attempts per request at most (the first one plus retries)
MAX_ATTEMPTS = 3


def retry_reason(exc: BaseException, *, replayable: bool) -> tuple[str | None, str | None]:
    """(failure reason if retrying is safe, denial reason otherwise) for attempt failure ``exc``.

    Both are None when ``exc`` is not a backend failure at all (the client's body broke, a
    limit of ours): such failures are not retry candidates and are not counted."""
    if isinstance(exc, UpstreamConnectError):
        return exc.reason, None
    if isinstance(exc, UpstreamError) and exc.reason != "body_timeout":
        return (exc.reason, None) if replayable else (None, "not_replayable")
    return None, None


class RetryBudget:
    """One budget (global or one route's); credit in hundredths of a retry."""

    __slots__ = ("credit", "ratio", "retries", "denied")

    def __init__(self, ratio_percent: int) -> None:
        self.ratio = ratio_percent
        self.credit = ratio_percent * 100
        self.retries = 0
        self.denied = 0

    def _retune(self, ratio_percent: int) -> None:
        if ratio_percent != self.ratio:  # a reload changed the ratio: keep credit within the new cap
            self.ratio = ratio_percent
            self.credit = min(self.credit, ratio_percent * 100)

    def deposit(self, ratio_percent: int) -> None:
        """A primary request was sent."""
        if ratio_percent != self.ratio:
            self._retune(ratio_percent)
        credit = self.credit + ratio_percent
        cap = ratio_percent * 100
        self.credit = cap if credit > cap else credit

    def try_withdraw(self, ratio_percent: int) -> bool:
        """Spend one retry if the credit allows."""
        if ratio_percent != self.ratio:
            self._retune(ratio_percent)
        if self.credit >= 100:
            self.credit -= 100
            self.retries += 1
            return True
        self.denied += 1
        return False


class RetryBudgets:
    """The global budget and the per-pool ones; kept in the Server's state store."""

    __slots__ = ("global_budget", "routes")

    def __init__(self) -> None:
        self.global_budget: RetryBudget | None = None
        #: pool name -> its budget (pools named in ``per_route_ratio_percent``)
        self.routes: dict[str, RetryBudget] = {}

    def for_pool(self, pool: str, cfg: RetryBudgetConfig) -> tuple[RetryBudget, int]:
        """(budget, ratio) for a request routed to ``pool`` under ``cfg`` (``resilience.retry_budget``)."""
        routes = cfg.per_route_ratio_percent
        ratio = routes.get(pool) if routes else None  # no call at all in the common case
        if ratio is None:
            budget = self.global_budget
            if budget is None:
                budget = self.global_budget = RetryBudget(cfg.ratio_percent)
            return budget, cfg.ratio_percent
        budget = self.routes.get(pool)
        if budget is None:
            budget = self.routes[pool] = RetryBudget(ratio)
        return budget, ratio
