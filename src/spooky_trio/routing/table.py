"""Deterministic host/path/method routing (spec: "Route selection is deterministic").

Order: longest ``path_prefix``; then host-specific over host-agnostic; exact host over
wildcard; longer wildcard suffix over shorter; method-specific over method-agnostic; then
the lexicographically smaller pool name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from spooky_trio.config import PoolConfig


@attrs.frozen
class RouteEntry:
    """One pool's matcher, normalized: host lowercase, method uppercase."""

    pool: str
    host: str | None
    path_prefix: str | None
    method: str | None

    @property
    def is_wildcard(self) -> bool:
        return self.host is not None and self.host.startswith("*.")

    def sort_key(self) -> tuple[int, int, int, int, int, str]:
        """Smaller sorts first = more specific (wins)."""
        prefix_len = len(self.path_prefix or "")
        has_host = self.host is not None
        exact = has_host and not self.is_wildcard
        wildcard_len = len(self.host) if self.is_wildcard and self.host else 0
        return (
            -prefix_len,
            0 if has_host else 1,
            0 if exact else 1,
            -wildcard_len,
            0 if self.method else 1,
            self.pool,
        )

    def matches(self, host: str, path: str, method: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.host is None:
            return True
        if self.is_wildcard:
            suffix = self.host[1:]  # ".example.com"
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == self.host


_REASONS = (
    lambda e: f"longest prefix {e.path_prefix}",
    lambda e: "host-specific beats any host",
    lambda e: "exact host beats wildcard",
    lambda e: f"longer wildcard {e.host}",
    lambda e: "method-specific",
    lambda e: "pool name tie-break",
)


class RoutingTable:
    """Immutable route table; ``match`` returns the winning pool name or None (404)."""

    def __init__(self, entries: Iterable[RouteEntry]) -> None:
        self._entries: tuple[RouteEntry, ...] = tuple(sorted(entries, key=RouteEntry.sort_key))

    @classmethod
    def from_pools(cls, pools: Mapping[str, PoolConfig]) -> RoutingTable:
        """Build from ``{name: PoolConfig}``."""
        entries = []
        for name, pool in pools.items():
            route = pool.route
            entries.append(
                RouteEntry(
                    pool=name,
                    host=route.host.lower() if route.host else None,
                    path_prefix=route.path_prefix or None,
                    method=route.method.upper() if route.method else None,
                )
            )
        return cls(entries)

    @property
    def entries(self) -> tuple[RouteEntry, ...]:
        return self._entries

    def explain(self, host: str, path: str, method: str) -> tuple[RouteEntry | None, str]:
        """:meth:`match` plus why the winner won against the next matching entry, e.g.
        ``longest prefix /api``, ``exact host beats wildcard``, ``method-specific``,
        ``pool name tie-break`` (``only match`` / ``no match``)."""
        found = [e for e in self._entries if e.matches(host, path, method)][:2]
        if not found:
            return None, "no match"
        if len(found) == 1:
            return found[0], "only match"
        winner, runner_up = found
        for index, (a, b) in enumerate(zip(winner.sort_key(), runner_up.sort_key())):
            if a != b:
                return winner, _REASONS[index](winner)
        return winner, "pool name tie-break"  # unreachable: pool names are unique

    def match(self, host: str, path: str, method: str) -> RouteEntry | None:
        """First entry in specificity order that matches; ``host`` without port, lowercase."""
        for entry in self._entries:
            if entry.matches(host, path, method):
                return entry
        return None
