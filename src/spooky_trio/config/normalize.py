"""Value normalizers used as attrs converters.

Converters here never raise: type checking happens earlier (in the cattrs hooks), and an
attrs converter that raised would escape cattrs' per-field error collection.
"""

from __future__ import annotations


def upper_list(value: object) -> object:
    """Upper-case every string of a list (HTTP method lists); other values pass unchanged."""
    if isinstance(value, list):
        return [item.upper() if isinstance(item, str) else item for item in value]
    return value


def pool_names(value: object) -> object:
    """Trim every string of a list of pool names and drop the blank ones, as Spooky does for
    ``hedging.route_allowlist`` and ``brownout.core_routes``; other values pass unchanged."""
    if isinstance(value, list):
        return [item.strip() if isinstance(item, str) else item for item in value if not (isinstance(item, str) and not item.strip())]
    return value


def upper_optional(value: object) -> object:
    """Upper-case a string (an HTTP method); ``None`` and non-strings pass unchanged."""
    return value.upper() if isinstance(value, str) else value


def empty_to_none(value: object) -> object:
    """Treat ``""`` like an omitted optional path (Spooky configs write ``cert: ""``)."""
    return None if value == "" else value
