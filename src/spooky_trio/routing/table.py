"""Deterministic routing (spec: "Route selection is deterministic"; extensions.md section 1).

Order: longest ``path_prefix``; then host-specific over host-agnostic; exact host over
wildcard; longer wildcard suffix over shorter; method-specific over method-agnostic; then
more matchers (``headers``, ``query``, ``cookies``: ``routing/matchers.py``) over fewer;
then the lexicographically smaller pool name. A route matches when its host, path prefix
and method match and every one of its matchers holds; a pool without a route is not in
the table (it is reached only through another pool's split or mirror).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import attrs

from spooky_trio.config import PoolConfig
from spooky_trio.routing.matchers import Matcher, MatchRequest, compile_matchers


@attrs.frozen
class RouteEntry:
    """One pool's route, normalized: host lowercase, method uppercase, matchers compiled."""

    pool: str
    host: str | None
    path_prefix: str | None
    method: str | None
    matchers: tuple[Matcher, ...] = ()

    @property
    def is_wildcard(self) -> bool:
        return self.host is not None and self.host.startswith("*.")

    def sort_key(self) -> tuple[int, int, int, int, int, int, str]:
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
            -len(self.matchers),
            self.pool,
        )

    def matches_route(self, host: str, path: str, method: str) -> bool:
        """Host, path prefix and method match (the matchers are not asked)."""
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

    def failed_matcher(self, request: MatchRequest | None) -> Matcher | None:
        """The first matcher ``request`` does not satisfy (None: all hold). Without a
        request, a route with matchers never matches."""
        for matcher in self.matchers:
            if request is None or not matcher.matches(request):
                return matcher
        return None

    def matches(self, host: str, path: str, method: str, request: MatchRequest | None = None) -> bool:
        return self.matches_route(host, path, method) and (not self.matchers or self.failed_matcher(request) is None)


_REASONS = (
    lambda e: f"longest prefix {e.path_prefix}",
    lambda e: "host-specific beats any host",
    lambda e: "exact host beats wildcard",
    lambda e: f"longer wildcard {e.host}",
    lambda e: "method-specific",
    lambda e: f"more matchers ({len(e.matchers)})",
    lambda e: "pool name tie-break",
)

#: (pool, matcher label) -> requests that pool's route matched by host, path and method
#: but that matcher turned away (the first that failed)
MatcherMisses = collections.Counter[tuple[str, str]]


class RoutingTable:
    """Immutable route table; ``match`` returns the winning entry or None (404)."""

    def __init__(self, entries: Iterable[RouteEntry]) -> None:
        self._entries: tuple[RouteEntry, ...] = tuple(sorted(entries, key=RouteEntry.sort_key))
        #: some route has matchers (the request must then be passed to ``match``)
        self.has_matchers = any(e.matchers for e in self._entries)

    @classmethod
    def from_pools(cls, pools: Mapping[str, PoolConfig]) -> RoutingTable:
        """Build from ``{name: PoolConfig}``; pools without a route are left out."""
        entries = []
        for name, pool in pools.items():
            route = pool.route
            if route is None:
                continue
            entries.append(
                RouteEntry(
                    pool=name,
                    host=route.host.lower() if route.host else None,
                    path_prefix=route.path_prefix or None,
                    method=route.method.upper() if route.method else None,
                    matchers=compile_matchers(getattr(route, "headers", []), getattr(route, "query", []), getattr(route, "cookies", [])),
                )
            )
        return cls(entries)

    @property
    def entries(self) -> tuple[RouteEntry, ...]:
        return self._entries

    def explain(self, host: str, path: str, method: str, request: MatchRequest | None = None,
                misses: MatcherMisses | None = None) -> tuple[RouteEntry | None, str]:
        """:meth:`match` plus why the winner won against the next matching entry, e.g.
        ``longest prefix /api``, ``exact host beats wildcard``, ``method-specific``, ``more
        matchers (2)``, ``pool name tie-break`` (``only match`` / ``no match``); then which
        matchers held (``matched header x-canary``) and the first more specific route a
        matcher turned away (``api-canary not taken: header x-canary did not match``);
        ``misses`` as in :meth:`match`."""
        found: list[RouteEntry] = []
        turned_away: tuple[RouteEntry, Matcher] | None = None
        for entry in self._entries:
            if not entry.matches_route(host, path, method):
                continue
            failed = entry.failed_matcher(request) if entry.matchers else None
            if failed is None:
                found.append(entry)
                if len(found) == 2:
                    break
            elif not found:
                if turned_away is None:
                    turned_away = (entry, failed)
                if misses is not None:
                    misses[(entry.pool, failed.label)] += 1
        if not found:
            reason = "no match"
        elif len(found) == 1:
            reason = "only match"
        else:
            winner, runner_up = found
            reason = "pool name tie-break"  # unreachable: pool names are unique
            for index, (a, b) in enumerate(zip(winner.sort_key(), runner_up.sort_key())):
                if a != b:
                    reason = _REASONS[index](winner)
                    break
        if found and found[0].matchers:
            reason += "; matched " + ", ".join(m.describe() for m in found[0].matchers)
        if turned_away is not None:
            entry, failed = turned_away
            reason += f"; {entry.pool} not taken: {failed.describe()} did not match"
        return (found[0] if found else None), reason

    def match(self, host: str, path: str, method: str, request: MatchRequest | None = None,
              misses: MatcherMisses | None = None) -> RouteEntry | None:
        """First entry in specificity order that matches; ``host`` without port, lowercase.
        ``request`` is what matchers read (a route with matchers never matches without
        it); ``misses`` counts the matchers that turned a request away."""
        for entry in self._entries:
            if entry.matches_route(host, path, method):
                if not entry.matchers:
                    return entry
                failed = entry.failed_matcher(request)
                if failed is None:
                    return entry
                if misses is not None:
                    misses[(entry.pool, failed.label)] += 1
        return None
