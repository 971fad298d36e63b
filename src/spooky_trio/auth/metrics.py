"""Where the auth layer counts what it does, as a structural type (the server's
:class:`~spooky_trio.observability.metrics.Metrics` satisfies it; observability sits in the
same row, so it is not imported)."""

from __future__ import annotations

from typing import Protocol


class AuthMetrics(Protocol):
    """The auth counters (observability/metrics.py defines the metrics)."""

    def auth_decision(self, pool: str, step: str, result: str) -> None:
        """``step`` (``api_key``, ``jwt``, ``external_http``, ``oidc``) of ``pool`` decided
        ``result``: ``allowed``, ``fail_open`` or the reason of its refusal."""
        ...

    def auth_call(self, kind: str, result: str, seconds: float) -> None:
        """One outbound call (``jwks``, ``oidc_discovery``, ``oidc_introspection``,
        ``external_http``) ended with ``result`` (``ok``, ``error``, ``timeout``...) after
        ``seconds``."""
        ...

    def jwks_stale_served(self) -> None:
        """A token was verified with JWKS keys older than ``jwks_cache_secs`` because the
        refreshes since have failed."""
        ...
