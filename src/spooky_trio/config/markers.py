"""Field metadata markers shared by the schema modules.

``EXTENSION``: the key is ours, absent from Spooky's schema (extensions.md): a config that
uses it does not run on Spooky (``spooky-trio check --spooky-strict`` reports it).
"""

from __future__ import annotations

EXTENSION = "spooky_trio.extension"
