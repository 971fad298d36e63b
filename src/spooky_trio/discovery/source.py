"""What every discovery source shares: its failure type, the answer of a polled source, and
the sink a source reports to (which applies answers to the state, logs and counts them).

A polled source (file, DNS SRV) is asked :meth:`PolledSource.fetch` at its period; a
watching one (etcd) runs its own loop and calls the sink. Either way the sink is the one
place that turns an answer into a change of the pool, a log line per changed backend and a
metric, and a failure into a counted, logged, last-known-good non-event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import attrs

from spooky_trio.config.backend_entries import BackendEntry
from spooky_trio.discovery.membership import DiscoveryState, SourceKey

log = logging.getLogger("spooky.discovery")

#: the reasons a source fails, as the ``reason`` label of ``spooky_discovery_errors_total``
REASONS = ("unreachable", "timeout", "not_found", "invalid", "empty", "auth", "too_large", "internal")


class DiscoveryError(Exception):
    """A source gave no usable answer; ``reason`` is one of :data:`REASONS`, the message is
    safe to log (no secret)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Answer:
    """A polled source's backends; ``ttl``: seconds the answer is good for (DNS), else None."""

    entries: Sequence[BackendEntry]
    ttl: float | None = None


class PolledSource(Protocol):
    """A source asked at its period (``discovery/file.py``, ``discovery/srv.py``)."""

    async def fetch(self) -> Answer | None:
        """The current backends, or None when nothing changed since the last call (a file
        whose content is the same). Raises :class:`DiscoveryError`; bounded in time."""
        ...


class DiscoveryMetrics(Protocol):
    """Where answers and failures are counted (the server's Metrics)."""

    def discovery_update(self, pool: str, source: str) -> None: ...

    def discovery_error(self, pool: str, source: str, reason: str) -> None: ...


class SourceSink:
    """Applies one source's answers to the state (module docstring)."""

    def __init__(self, state: DiscoveryState, key: SourceKey, metrics: DiscoveryMetrics | None) -> None:
        self.state = state
        self.key = key
        self.metrics = metrics
        pool, kind, target = key
        #: how log lines name the source: ``pool api (dns_srv _api._tcp.example)``
        self.label = f"pool {pool} ({kind} {' '.join(target)})"

    @property
    def pool(self) -> str:
        return self.key[0]

    @property
    def kind(self) -> str:
        return self.key[1]

    def answer(self, entries: Sequence[BackendEntry]) -> bool:
        """A good answer; False when it was empty (counted as a failure, the set stays)."""
        if not entries:
            self.failure(DiscoveryError("empty", "the source named no backend"))
            return False
        was_failing = self.state.status(self.key).failing
        change = self.state.answer(self.key, entries, time.time())
        if was_failing:
            log.info("%s: the source answers again (%d backends)", self.label, len(entries))
        for line in change.lines() if change else ():
            log.info("%s: %s", self.label, line)
        if change and self.metrics is not None:
            self.metrics.discovery_update(self.pool, self.kind)
        return True

    def failure(self, error: DiscoveryError) -> None:
        """A failed answer: counted, logged (a warning when a failure streak starts, debug
        while it lasts, info when it ends); the set stays."""
        status = self.state.status(self.key)
        starts = self.state.failure(self.key, error.reason, str(error), time.time())
        if self.metrics is not None:
            self.metrics.discovery_error(self.pool, self.kind, error.reason)
        if starts:
            kept = "no backend from it yet" if status.entries is None else f"its last good set of {len(status.entries)} backends"
            log.warning("%s: discovery failed (%s: %s); keeping %s", self.label, error.reason, error, kept)
        else:
            log.debug("%s: discovery still failing (%s: %s)", self.label, error.reason, error)

    def refused(self, reason: str, message: str) -> None:
        """Part of an answer was refused (an invalid etcd value): counted and logged each
        time; the rest of the answer applies and the source is not marked as failing."""
        self.state.failure(self.key, reason, message, time.time(), streak=False)
        if self.metrics is not None:
            self.metrics.discovery_error(self.pool, self.kind, reason)
        log.warning("%s: %s", self.label, message)
