"""Warnings: what a config may say, and Spooky accepts, but that is probably not what was meant.

A warning never stops a config from loading (Spooky accepts these configs, and so do we);
``spooky-trio check`` prints each one (``<file>: warning: <path>: line L col C: <message>``)
and still exits 0; ``spooky-trio run`` logs each one on ``spooky.config`` and every reload on
``spooky.reload``; the answers of a reload and of a dry run list them (``warnings``).
"""

from __future__ import annotations

from spooky_trio.config.address import is_token
from spooky_trio.config.issues import ConfigIssue, PositionMap, sort_issues
from spooky_trio.config.pool_keyed import unknown_pool_warnings
from spooky_trio.config.schema import Config
from spooky_trio.config.validate_traffic import traffic_warnings
from spooky_trio.config.validate_plugins import unused_plugin_warnings


def config_warnings(config: Config) -> list[ConfigIssue]:
    """Every warning for ``config``, in file order (empty when there is nothing to say)."""
    return sort_issues(unknown_pool_warnings(config) + _decision_header_warnings(config) + traffic_warnings(config)
                        + unused_plugin_warnings(config))


def _decision_header_warnings(config: Config) -> list[ConfigIssue]:
    # Spooky accepts any non-blank observability.routing.header_name (and never sends the
    # header); we send it, so a name that is no HTTP token is accepted but not sent.
    routing = config.observability.routing
    name = routing.header_name.strip()
    if not routing.expose_header or not name or is_token(name):
        return []
    message = f"{routing.header_name!r} is not an HTTP header name, so the route decision header is never sent"
    return [PositionMap(config.source_positions).issue(("observability", "routing", "header_name"), message)]
