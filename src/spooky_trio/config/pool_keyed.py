"""Settings keyed by pool name, and the warning for a name that matches no pool.

Spooky matches these settings against the name of the pool that routed a request
(``upstream.<name>``) and never checks that a name exists (spooky-head.md section 4); a name
that matches no pool, including one that looks like a path prefix (Spooky's own doc example
``caps: {"/api": 128}``), is accepted and simply never applies. We accept it too, and say so:
:func:`unknown_pool_warnings` gives one warning per such name, which ``spooky-trio check``
prints and ``spooky-trio run`` and every reload log.

:data:`POOL_KEYED` lists every such setting; a feature that adds one appends its
:data:`NameSource` there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config

#: yields (key path to report at, pool name) for each name a setting holds
NameSource = Callable[[Config], Iterator[tuple[KeyPath, str]]]


def map_keys(path: KeyPath, get: Callable[[Config], Mapping[str, object]]) -> NameSource:
    """A map keyed by pool name at ``path``: each key is reported at its own entry."""

    def names(config: Config) -> Iterator[tuple[KeyPath, str]]:
        for name in get(config):
            yield path + (name,), name

    return names


def list_items(path: KeyPath, get: Callable[[Config], Sequence[str]]) -> NameSource:
    """A list of pool names at ``path`` (trimmed, blanks dropped when loaded, so an entry's
    written index is not known): each name is reported at the list."""

    def names(config: Config) -> Iterator[tuple[KeyPath, str]]:
        for name in get(config):
            yield path, name

    return names


def rule_allowlists(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """``scoped_rate_limits[].route_allowlist``: names trimmed; a blank one is an error, not
    dropped (spooky-head.md section 4), so each name is reported at its own entry."""
    for index, rule in enumerate(config.resilience.scoped_rate_limits):
        for position, name in enumerate(rule.route_allowlist):
            if name.strip():
                yield ("resilience", "scoped_rate_limits", index, "route_allowlist", position), name.strip()


POOL_KEYED: list[NameSource] = [
    map_keys(("resilience", "route_queue", "caps"), lambda c: c.resilience.route_queue.caps),
    map_keys(("resilience", "retry_budget", "per_route_ratio_percent"), lambda c: c.resilience.retry_budget.per_route_ratio_percent),
    list_items(("resilience", "hedging", "route_allowlist"), lambda c: c.resilience.hedging.route_allowlist),
    list_items(("resilience", "brownout", "core_routes"), lambda c: c.resilience.brownout.core_routes),
    rule_allowlists,
]


def unknown_pool_warnings(config: Config) -> list[ConfigIssue]:
    """One warning per pool-keyed entry whose name is not a pool of ``config``, with the key
    path and (for a loaded config) the line it was written on."""
    positions = PositionMap(config.source_positions)
    out: list[ConfigIssue] = []
    for source in POOL_KEYED:
        for path, name in source(config):
            if name in config.upstream:
                continue
            hint = " (these keys are pool names, not path prefixes)" if name.startswith("/") else ""
            message = f"no pool is named {name!r}, so this entry never applies{hint}"
            out.append(positions.issue(path, message, at_key=True))
    return out
