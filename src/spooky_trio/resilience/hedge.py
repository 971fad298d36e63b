"""Hedging (``resilience.hedging``): a second attempt on another backend after ``delay_ms``.

For methods in ``safe_methods`` without a request body, on pools named in ``route_allowlist``
(empty: every pool; names trimmed, blanks dropped, matched exactly as Spooky does),
the pipeline starts the primary attempt and, if no response head arrived ``delay_ms`` later,
a hedge attempt on a different backend. The first attempt whose response head arrives wins
(:meth:`HedgeRace.claim`) and relays its response; the others are cancelled at once through
their own cancel scopes, which aborts their upstream exchanges (HTTP/2 RST_STREAM, HTTP/1.1
connection closed), so no upstream stream outlives the request.

:class:`HedgeRace` is the bookkeeping of one race: plain synchronous state, driven by the
attempt tasks the pipeline runs in a nursery it owns for the request.
"""

from __future__ import annotations

import trio

from spooky_trio.config import HedgingConfig


def hedge_allowed(method: bytes, pool: str, cfg: HedgingConfig) -> bool:
    """Is a request with ``method`` routed to ``pool`` eligible for hedging under ``cfg``
    (``resilience.hedging``)?"""
    if method.decode("latin-1") not in cfg.safe_methods:
        return False
    allow = cfg.route_allowlist
    return not allow or pool in allow


class HedgeRace:
    """Attempts of one hedged request: who started, who won, who failed."""

    def __init__(self) -> None:
        #: cancel scope of each attempt, by attempt index (0: primary)
        self.scopes: dict[int, trio.CancelScope] = {}
        self.winner: int | None = None
        self.errors: dict[int, BaseException] = {}
        #: set when a winner is known or every started attempt failed
        self.settled = trio.Event()

    @property
    def running(self) -> int:
        """Attempts started that neither won nor failed yet."""
        return len(self.scopes) - len(self.errors) - (self.winner is not None)

    def start(self, index: int, scope: trio.CancelScope) -> None:
        self.scopes[index] = scope
        if self.winner is not None and index != self.winner:
            scope.cancel()  # started after another attempt already won: do not send it

    def claim(self, index: int) -> bool:
        """Attempt ``index`` has a response head: True if it is the first (it wins and every
        other attempt is cancelled), False if another already won."""
        if self.winner is not None:
            return False
        self.winner = index
        for other, scope in self.scopes.items():
            if other != index:
                scope.cancel()
        self.settled.set()
        return True

    def failed(self, index: int, exc: BaseException) -> None:
        """Attempt ``index`` failed before a winner was known."""
        self.errors[index] = exc
        if self.winner is None and self.running == 0:
            self.settled.set()
