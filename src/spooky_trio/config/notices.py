"""Warnings: what a config may say, and Spooky accepts, but that is probably not what was meant.

A warning never stops a config from loading (Spooky accepts these configs, and so do we);
``spooky-trio check`` prints each one (``<file>: warning: <path>: line L col C: <message>``)
and still exits 0; ``spooky-trio run`` logs each one on ``spooky.config`` and every reload on
``spooky.reload``; the answers of a reload and of a dry run list them (``warnings``).
"""

from __future__ import annotations

from spooky_trio.config.issues import ConfigIssue, sort_issues
from spooky_trio.config.pool_keyed import unknown_pool_warnings
from spooky_trio.config.schema import Config
from spooky_trio.config.validate_traffic import traffic_warnings


def config_warnings(config: Config) -> list[ConfigIssue]:
    """Every warning for ``config``, in file order (empty when there is nothing to say)."""
    return sort_issues(unknown_pool_warnings(config) + traffic_warnings(config))
