"""Field metadata markers of the schema classes, for the tools that reason about keys.

Put on an attrs field with ``attrs.field(..., metadata=EXT)`` (or ``COMPAT``):

- :data:`EXTENSION` (``EXT``): a key of ours that Spooky does not have (``extensions.md``, and
  anything else we accept that Spooky does not). ``spooky-trio check --spooky-strict``
  reports every place a config writes one (:mod:`spooky_trio.config.portability`), and the
  schema reference (``docs/configuration.md``) marks it ``(ext)``; tests keep the two in step.
  A feature that adds an extension key marks it here, and nothing else needs a list.
- :data:`NO_EFFECT` (``COMPAT``): a Spooky key accepted so Spooky configs load, that changes
  nothing in spooky-trio; the reference marks it ``(no effect)``.

Loader-filled fields carry :data:`spooky_trio.config.schema.INTERNAL` instead (not YAML keys).
"""

from __future__ import annotations

from collections.abc import Mapping

EXTENSION = "spooky_extension"
NO_EFFECT = "spooky_no_effect"

#: metadata of an extension key
EXT: Mapping[str, bool] = {EXTENSION: True}
#: metadata of a key accepted for compatibility only
COMPAT: Mapping[str, bool] = {NO_EFFECT: True}
