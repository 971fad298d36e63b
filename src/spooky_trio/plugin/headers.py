"""Header fields as a plugin sees them (:class:`Headers`), and the checks every change passes.

A plugin works with ``str`` names and values; underneath they are the proxy's own field list
(lowercase ``bytes`` names, ``bytes`` values), changed in place, so nothing is copied per
request. Every change is checked where it is made, so a plugin's mistake raises in the
plugin (and its hook fails: a 500 for that request) instead of reaching a client or a
backend: a name must be an HTTP token, a value must hold no control character but HTAB, no
leading or trailing whitespace, only latin-1 characters, at most :data:`MAX_VALUE_BYTES`;
a list grows to :data:`MAX_FIELDS` fields at most.
The fields that frame the message (``content-length``, ``transfer-encoding``, the
connection-specific ones; on a request also ``host`` and ``te``) belong to the proxy: reading
them is fine, changing them raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

#: the longest value a plugin may set (a JWT fits comfortably)
MAX_VALUE_BYTES = 16 * 1024
#: the most fields a plugin may grow one request's or response's list to (every buffer has a bound)
MAX_FIELDS = 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: control characters a value must not hold (HTAB, 0x09, is allowed inside)
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
#: request fields the proxy owns: framing, and the authority (``host_policy`` decides it)
REQUEST_MANAGED = _CONNECTION_SPECIFIC | {b"content-length", b"host", b"te"}
#: response fields the proxy owns: framing
RESPONSE_MANAGED = _CONNECTION_SPECIFIC | {b"content-length", b"trailer"}

Fields = list[tuple[bytes, bytes]]


def field_name(name: str, managed: frozenset[bytes] = frozenset()) -> bytes:
    """``name`` as the proxy stores it (lowercase bytes); ValueError when it is no token or
    one of the ``managed`` fields."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not an HTTP field name")
    raw = name.lower().encode("ascii")
    if raw in managed:
        raise ValueError(f"{name!r} is managed by the proxy and cannot be changed by a plugin")
    return raw


def field_value(value: str) -> bytes:
    """``value`` as the proxy stores it; ValueError for what would break the message."""
    if not isinstance(value, str):
        raise ValueError(f"a field value must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a field value holds only latin-1 characters (encode other text first)") from None
    if len(raw) > MAX_VALUE_BYTES:
        raise ValueError(f"a field value is at most {MAX_VALUE_BYTES} bytes")
    if _VALUE_CTL.search(raw) or raw[:1] in (b" ", b"\t") or raw[-1:] in (b" ", b"\t"):
        raise ValueError("a field value holds no control characters and no leading or trailing whitespace")
    return raw


class Headers:
    """The header fields of one request or response (module docstring).

    Names are case-insensitive; order and repeats are kept. ``Headers()`` or
    ``Headers.of([("x-a", "1")])`` makes a free-standing one (plugin tests)."""

    __slots__ = ("_fields", "_managed")

    def __init__(self, fields: Fields | None = None, managed: frozenset[bytes] = REQUEST_MANAGED) -> None:
        #: the proxy's own list, changed in place
        self._fields: Fields = fields if fields is not None else []
        self._managed = managed

    @classmethod
    def of(cls, fields: Mapping[str, str] | Iterable[tuple[str, str]] = (), managed: frozenset[bytes] = REQUEST_MANAGED) -> Headers:
        """Headers holding ``fields`` (a mapping or (name, value) pairs), each one checked."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        return cls([(field_name(name, managed), field_value(value)) for name, value in pairs], managed)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        raw = name.lower().encode("latin-1", "replace")
        for n, v in self._fields:
            if n == raw:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        raw = name.lower().encode("latin-1", "replace")
        return [v.decode("latin-1") for n, v in self._fields if n == raw]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        raw = name.lower().encode("latin-1", "replace")
        return any(n == raw for n, _ in self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name, value) pairs, names lowercase."""
        for n, v in self._fields:
            yield n.decode("latin-1"), v.decode("latin-1")

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:
        """(name, value) pairs, names lowercase."""
        return list(self)

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one with ``value``."""
        raw, data = field_name(name, self._managed), field_value(value)
        kept = [(n, v) for n, v in self._fields if n != raw]
        if len(kept) >= MAX_FIELDS:
            raise ValueError(f"a message holds at most {MAX_FIELDS} header fields")
        kept.append((raw, data))
        self._fields[:] = kept

    def add(self, name: str, value: str) -> None:
        """Add a ``name`` field, keeping the ones there are (at most :data:`MAX_FIELDS` in all)."""
        field = (field_name(name, self._managed), field_value(value))
        if len(self._fields) >= MAX_FIELDS:
            raise ValueError(f"a message holds at most {MAX_FIELDS} header fields")
        self._fields.append(field)

    def remove(self, name: str) -> int:
        """Remove every ``name`` field; returns how many there were."""
        raw = field_name(name, self._managed)
        before = len(self._fields)
        self._fields[:] = [(n, v) for n, v in self._fields if n != raw]
        return before - len(self._fields)

    def __repr__(self) -> str:
        # names only: values may be credentials, and reprs end up in logs
        return f"Headers({[n.decode('latin-1') for n, _ in self._fields]!r})"


def raw_fields(headers: Headers) -> Fields:
    """The proxy's field list under ``headers`` (proxy side, not plugin API)."""
    return headers._fields
