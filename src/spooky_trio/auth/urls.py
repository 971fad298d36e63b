"""URLs as the auth layer shows them (logs, ``/admin/runtime``)."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment (either may carry a credential)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    shown = f"{scheme}://{host}{slash}{path}"
    return shown + ("?***" if "?" in rest else "")
