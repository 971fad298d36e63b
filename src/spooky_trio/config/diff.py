"""What changes from one config to the next, as the reload transaction reports it (the
``diff`` of every reload answer and its log line)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from spooky_trio.config.schema import BackendConfig, Config, ListenerConfig, RouteConfig


class Changes(TypedDict):
    """Names added, removed and changed (sorted)."""

    added: list[str]
    removed: list[str]
    changed: list[str]


class ConfigDiff(TypedDict):
    """:func:`diff_summary`'s answer (the ``diff`` of a reload's JSON answer)."""

    pools: Changes
    routes: Changes
    backends: Changes
    listeners: Changes
    other: list[str]


def _listener_name(listener: ListenerConfig) -> str:
    return f"{listener.address}:{listener.port}"


def _backend_names(config: Config) -> dict[str, BackendConfig]:
    return {f"{name}/{b.id}@{b.address}": b for name, pool in config.upstream.items() for b in pool.backends}


def _route_text(route: RouteConfig | None) -> str:
    if route is None:
        return "(no route: reached through split or mirror)"
    matchers = len(route.headers) + len(route.query) + len(route.cookies)
    parts = [f"host={route.host}" if route.host else "", f"path_prefix={route.path_prefix}" if route.path_prefix else "",
             f"method={route.method}" if route.method else "", f"matchers={matchers}" if matchers else ""]
    return " ".join(p for p in parts if p)


def _changes(old: Mapping[str, object], new: Mapping[str, object]) -> Changes:
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }


#: top-level sections compared as a whole for the ``other`` entry of the diff
_SECTIONS = ("upstream_tls", "load_balancing", "log", "performance", "resilience", "observability", "security")


def diff_summary(old: Config, new: Config) -> ConfigDiff:
    """What changes from config ``old`` to ``new``: pools, routes, backends (pool/id@address,
    the identity that keeps state), listeners (address:port) added/removed/changed, and the
    other top-level sections that differ."""
    old_routes = {name: _route_text(pool.route) for name, pool in old.upstream.items()}
    new_routes = {name: _route_text(pool.route) for name, pool in new.upstream.items()}
    old_listeners = {_listener_name(listener): listener for listener in old.effective_listeners()}
    new_listeners = {_listener_name(listener): listener for listener in new.effective_listeners()}
    return {
        "pools": _changes(dict(old.upstream), dict(new.upstream)),
        "routes": {
            "added": [f"{n}: {new_routes[n]}" for n in sorted(set(new_routes) - set(old_routes))],
            "removed": [f"{n}: {old_routes[n]}" for n in sorted(set(old_routes) - set(new_routes))],
            "changed": [f"{n}: {old_routes[n]} -> {new_routes[n]}" for n in sorted(set(old_routes) & set(new_routes))
                        if old_routes[n] != new_routes[n]],
        },
        "backends": _changes(_backend_names(old), _backend_names(new)),
        "listeners": _changes(old_listeners, new_listeners),
        "other": [section for section in _SECTIONS if getattr(old, section) != getattr(new, section)],
    }


def diff_line(diff: ConfigDiff) -> str:
    """The diff as one log-friendly line."""
    kinds = (("pools", diff["pools"]), ("routes", diff["routes"]), ("backends", diff["backends"]), ("listeners", diff["listeners"]))
    parts = [f"{kind} +{len(entry['added'])} -{len(entry['removed'])} ~{len(entry['changed'])}" for kind, entry in kinds]
    details: list[str] = []
    for kind, entry in kinds:
        if kind == "routes":
            continue
        details.extend(f"+{kind[:-1]} {name}" for name in entry["added"])
        details.extend(f"-{kind[:-1]} {name}" for name in entry["removed"])
        details.extend(f"~{kind[:-1]} {name}" for name in entry["changed"])
    details.extend(f"~route {text}" for text in diff["routes"]["changed"])
    line = ", ".join(parts) + (f"; other: {', '.join(diff['other'])}" if diff["other"] else "")
    return line + (f" [{'; '.join(details)}]" if details else "")
