"""Reading a filter's ``config`` mapping: each reader raises PluginConfigError naming the
key, which ``spooky-trio check`` reports at ``plugins[i].config.<key>`` with its line."""

from __future__ import annotations

from spooky_trio.plugin import PluginConfigError


def text(config: dict[str, object], key: str, default: str | None = None) -> str | None:
    value = config.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise PluginConfigError("must be a non-empty string", key)
    return value


def flag(config: dict[str, object], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise PluginConfigError("must be true or false", key)
    return value


def number(config: dict[str, object], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PluginConfigError(f"must be a whole number from {low} to {high}", key)
    return value


def only(config: dict[str, object], known: set[str]) -> None:
    """Refuse keys the filter does not know (a typo would otherwise be ignored)."""
    for key in config:
        if key not in known:
            raise PluginConfigError(f"unknown key (known: {', '.join(sorted(known))})", key)
