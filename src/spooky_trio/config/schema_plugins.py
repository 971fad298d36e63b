"""Schema of plugins (``extensions.md`` section 5): the top-level ``plugins`` list and, in
each pool, the ``filters`` that name its entries (``PoolConfig.filters``).

Every key is ours, marked :data:`~spooky_trio.config.markers.EXT`. The rules are in
:mod:`spooky_trio.config.validate_plugins`; finding the code and asking its factory about its
``config`` is :mod:`spooky_trio.config.plugins` (run with the file checks, by ``check``, at
start and by every reload); the chain step is ``proxy/plugins.py``; docs/plugins.md is the
plugin author's guide.
"""

from __future__ import annotations

import attrs

from spooky_trio.config.markers import EXT

#: the group a plugin package's entry points are declared in
ENTRY_POINT_GROUP = "spooky_trio.filters"


class PluginSettings(dict[str, object]):
    """A plugin's ``config`` mapping: plain YAML data, handed to its factory as a fresh copy.
    Its repr never shows values (a plugin's config may hold a secret, and a config's repr can
    end up in a log)."""

    def __repr__(self) -> str:
        return f"<plugin config: {', '.join(map(str, self))}>"


@attrs.frozen(kw_only=True)
class PluginConfig:
    """One ``plugins[]`` entry: where the factory is (``entry_point`` in group
    ``spooky_trio.filters``, or ``object``, ``"pkg.module:attribute"``: exactly one), the
    ``config`` it gets, and the deadline of each hook call (``plugin_timeout_ms``). ``name``
    is what pools' ``filters`` lists, the logs and the metrics call it."""

    name: str = attrs.field(metadata=EXT)
    entry_point: str | None = attrs.field(default=None, metadata=EXT)
    object: str | None = attrs.field(default=None, metadata=EXT)
    config: PluginSettings = attrs.field(factory=PluginSettings, metadata=EXT)
    plugin_timeout_ms: int = attrs.field(default=1000, metadata=EXT)

    def source(self) -> str:
        """``entry point NAME`` or ``object PATH``, for messages."""
        return f"entry point {self.entry_point!r}" if self.entry_point is not None else f"object {self.object!r}"
