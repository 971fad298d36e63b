"""What the health tasks need to know about a backend, as structural types.

The backend objects themselves (``core.generation.BackendRuntime`` and its long-lived
``core.state.BackendState``) live above this package; health only names the few
attributes it reads and writes, so it never imports upward.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from spooky_trio.config import HealthCheckConfig
from spooky_trio.upstream import BackendTarget


class HealthMetrics(Protocol):
    """Where probes and DNS refreshes are counted (the server's Metrics)."""

    def health_probe(self, reason: str | None) -> None: ...

    def dns_refresh(self, ok: bool, changed: bool) -> None: ...


class ProbeState(Protocol):
    """The long-lived state an active checker and a DNS refresher update."""

    @property
    def label(self) -> str: ...

    #: the address set DNS resolved last, and the one new connections dial
    addresses: frozenset[str]
    connect_address: str | None
    dns_failures: int

    def record_probe(self, reason: str | None, now: float) -> bool:
        """An active probe's result (None: success); True when it made the backend unhealthy."""
        ...

    def on_change(self) -> None:
        """Wake waiters on availability or address changes."""
        ...


class CheckedBackend(Protocol):
    """A backend as the supervisor reconciles tasks for it (``key``: its identity)."""

    @property
    def key(self) -> Hashable: ...

    @property
    def health_check(self) -> HealthCheckConfig | None: ...

    @property
    def authority(self) -> bytes: ...

    @property
    def target(self) -> BackendTarget: ...

    @property
    def connect_target(self) -> BackendTarget: ...

    @property
    def state(self) -> ProbeState: ...
