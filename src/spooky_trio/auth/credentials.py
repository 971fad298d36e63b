"""Credentials as Spooky reads them (spooky-head.md section 1): an API key header and the
bearer token of ``Authorization``."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from spooky_trio.http.messages import Headers

#: why a credential was refused (the access log's ``reason``)
MISSING = "auth_missing"
MALFORMED = "auth_malformed"
INVALID_KEY = "auth_invalid_key"


def first_header(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first ``name`` header (names are lowercase), or None."""
    for header, value in headers:
        if header == name:
            return value
    return None


class ApiKeyCheck:
    """``auth.api_key``: the first ``header_name`` header, trimmed and non-empty, must equal
    a trimmed key. Every key is compared with ``hmac.compare_digest`` (no early exit), so the
    time taken says nothing about which key, or how much of one, matched."""

    __slots__ = ("header", "_keys")

    def __init__(self, header_name: str, keys: Sequence[str]) -> None:
        self.header = header_name.strip().lower().encode("ascii")
        self._keys = tuple(key.strip().encode("utf-8") for key in keys)

    def refusal(self, headers: Headers) -> str | None:
        """None when the request carries a valid key, else the reason it is refused."""
        value = first_header(headers, self.header)
        presented = value.strip() if value is not None else b""
        if not presented:
            return MISSING
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return None if matched else INVALID_KEY


def bearer_token(headers: Headers) -> tuple[str | None, str]:
    """The token of the first ``Authorization`` header: its scheme (before the first
    whitespace) is ``bearer`` in any case, the rest trimmed and non-empty. Returns
    ``(token, "")`` or ``(None, reason)``: :data:`MISSING` without the header,
    :data:`MALFORMED` for another scheme or an empty or non-ASCII token."""
    value = first_header(headers, b"authorization")
    if value is None:
        return None, MISSING
    value = value.strip()
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None, MALFORMED
    token = parts[1].strip()
    if not token or not token.isascii():
        return None, MALFORMED
    return token.decode("ascii"), ""
