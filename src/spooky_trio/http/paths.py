"""Request-path normalization: the path every policy check, route and filter sees.

Without it, ``denied_path_prefixes: ["/admin"]`` is bypassed by ``//admin/x``,
``/./admin/x``, ``/x/../admin/x`` and ``/%61dmin/x``, which a backend resolves to
``/admin/x`` (issue 24, finding 3). :func:`normalize_path` resolves those the way mature
proxies do (Envoy's ``normalize_path``, ``merge_slashes`` and
``path_with_escaped_slashes_action``), on the path only (the query is left as sent):

1. percent-decoding of unreserved characters (RFC 3986 6.2.2.2: ``%61`` is ``a``, ``%2E`` is
   ``.``) and upper-case hex digits in the escapes that stay (``%2f`` -> ``%2F``); a ``%``
   not followed by two hex digits is malformed (400);
2. escaped slashes (``%2F``, ``%5C``): kept as escapes (``keep``, the default: they are
   data, not separators, as RFC 3986 says), refused (``reject``: 400) or decoded
   (``unescape``: ``%2F`` then separates segments, ``%5C`` is a backslash);
3. runs of slashes merged into one (``merge_slashes``);
4. ``.`` and ``..`` segments removed (RFC 3986 5.2.4; ``..`` never climbs above ``/``).

Case is kept (paths are case-sensitive); a backslash is an ordinary character. The common
path has none of ``%``, ``/.`` or ``//`` and is returned unchanged without work.
"""

from __future__ import annotations

import re

#: RFC 3986 unreserved characters: decoded from their percent escapes
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%(..)?", re.DOTALL)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = re.compile(rb"/{2,}")
ESCAPED_SLASH_ACTIONS = ("keep", "reject", "unescape")


class PathError(ValueError):
    """The path cannot be normalized: ``reason`` is the 400's machine-readable reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalize_path(path: bytes, *, merge_slashes: bool = True, escaped_slashes: str = "keep") -> bytes:
    """``path`` (no query) normalized per the module docstring; raises :class:`PathError`."""
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return path
    if b"%" in path:
        path = _decode(path, escaped_slashes)
    if merge_slashes and b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if b"/." in path:
        path = remove_dot_segments(path)
    return path


def _decode(path: bytes, escaped_slashes: str) -> bytes:
    def escape(match: re.Match[bytes]) -> bytes:
        digits = match.group(1)
        if digits is None or digits[0] not in _HEX or digits[1] not in _HEX:
            raise PathError("bad_path_escape", "a '%' in the path is not followed by two hex digits")
        byte = int(digits, 16)
        if byte in _UNRESERVED:
            return bytes((byte,))
        if byte in (0x2F, 0x5C):  # '/' and '\'
            if escaped_slashes == "reject":
                raise PathError("escaped_slash", "the path holds an escaped slash (%2F or %5C)")
            if escaped_slashes == "unescape":
                return bytes((byte,))
        return b"%" + digits.upper()

    return _ESCAPE.sub(escape, path)


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 for an absolute path: ``/a/./b/../c`` -> ``/a/c``; ``..`` stops at ``/``."""
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)
