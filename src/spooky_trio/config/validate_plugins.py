"""Rules for plugins (``extensions.md`` sections 5 and 7): the ``plugins`` entries and the
pools' ``filters`` lists. What needs the plugin's code (is it there, does its factory accept
its ``config``) is checked with the files, by :mod:`spooky_trio.config.plugins`."""

from __future__ import annotations

import re

from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config

#: a plugin's name: it ends up in metric labels, access-log reasons and log lines
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: ``package.module:attribute`` (the attribute may be dotted: ``mod:Class.factory``)
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_OBJECT = re.compile(_DOTTED + ":" + _DOTTED)
#: the longest ``plugin_timeout_ms`` (a hook that needs more is no filter)
MAX_TIMEOUT_MS = 60_000


def validate_plugins(out: Problems, config: Config) -> None:
    """Every rule of the ``plugins`` entries and the pools' ``filters``."""
    names: dict[str, int] = {}
    path: KeyPath
    for index, plugin in enumerate(config.plugins):
        path = ("plugins", index)
        if not _NAME.fullmatch(plugin.name):
            out.add(path + ("name",), f"invalid plugin name {plugin.name!r}: a letter or digit, then letters, digits, "
                                      "'_', '.' or '-' (at most 64)")
        elif plugin.name in names:
            out.add(path + ("name",), f"duplicate plugin name {plugin.name!r} (also plugins[{names[plugin.name]}])")
        else:
            names[plugin.name] = index
        if (plugin.entry_point is None) == (plugin.object is None):
            out.add(path, "give exactly one of entry_point (group spooky_trio.filters) and object (\"package.module:attribute\")")
        elif plugin.entry_point is not None:
            out.not_empty(path + ("entry_point",), plugin.entry_point)
        elif plugin.object is not None and not _OBJECT.fullmatch(plugin.object.strip()):
            out.add(path + ("object",), f"invalid import path {plugin.object!r}: write \"package.module:attribute\"")
        out.between(path + ("plugin_timeout_ms",), plugin.plugin_timeout_ms, 1, MAX_TIMEOUT_MS)
    for pool_name, pool in config.upstream.items():
        seen: set[str] = set()
        for index, name in enumerate(pool.filters):
            path = ("upstream", pool_name, "filters", index)
            if name not in names and not any(p.name == name for p in config.plugins):
                known = ", ".join(sorted(names)) or "none are defined"
                out.add(path, f"no plugin is named {name!r} (plugins: {known})")
            elif name in seen:
                out.add(path, f"{name!r} is already in this pool's filters (a filter runs once per request)")
            seen.add(name)


def unused_plugin_warnings(config: Config) -> list[ConfigIssue]:
    """One warning per ``plugins`` entry no pool lists (it is checked, never run)."""
    used = {name for pool in config.upstream.values() for name in pool.filters}
    positions = PositionMap(config.source_positions)
    return [positions.issue(("plugins", index, "name"), f"no pool lists plugin {plugin.name!r} in its filters, so it never runs")
            for index, plugin in enumerate(config.plugins) if plugin.name not in used]
