"""Spooky's request key grammar: which part of a request a key spec names, and how it is read.

Used by ``resilience.scoped_rate_limits[].key`` (``spooky-head.md`` section 2): one
implementation of the grammar for config validation (:func:`parse_key_spec`) and of the
extraction for the request path (:func:`key_reader`, :func:`fallback_key`).

Grammar (trimmed, ASCII case-insensitive, exactly what Spooky accepts)::

    path | authority | method | cid | sticky-cid | peer_ip | client_ip | bearer_token
    header:NAME | cookie:NAME | query:NAME            (NAME non-blank after trimming)

Extraction, Spooky's rules (each reader returns None when the request yields nothing):

* ``path``: the path without the query; ``authority``: ``:authority`` (Host on HTTP/1.1) as
  sent; ``method``: the method.
* ``cid``/``sticky-cid``: always None (Spooky never hands the connection ID to its key
  resolver, so these specs always fall back).
* ``peer_ip``/``client_ip``: the transport peer's IP, never ``X-Forwarded-For``.
* ``bearer_token``: the first ``Authorization`` field whose scheme (up to the first
  whitespace) is ``bearer`` (case-insensitive); the rest, trimmed.
* ``header:NAME``: the first field of that name.
* ``cookie:NAME``: from the ``cookie`` field(s), the first ``name=value`` pair whose name
  matches case-insensitively, value trimmed; a pair without ``=`` ends the search (Spooky's
  parser). Unlike Spooky, which reads only the first ``cookie`` field, every field is read
  (HTTP/2 and HTTP/3 clients may split cookies into several fields, RFC 9113 8.2.3).
* ``query:NAME``: the first ``name=value`` pair of the query whose name matches
  case-insensitively and whose value is not empty, not percent-decoded; a pair without ``=``
  ends the search (Spooky's parser).

A field value is used only when it is visible ASCII (and tab), as Spooky's ``to_str``; an
empty value counts as nothing. The caller applies the fallback when a reader returns None
(:func:`fallback_key`: authority, else the full path, else the method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

#: spec (lower case) -> canonical kind, for the specs without a name
_PLAIN = {
    "path": "path",
    "authority": "authority",
    "method": "method",
    "cid": "cid",
    "sticky-cid": "cid",
    "peer_ip": "peer_ip",
    "client_ip": "peer_ip",
    "bearer_token": "bearer_token",
}
_NAMED = ("header", "cookie", "query")


class KeyRequest(Protocol):
    """The request attributes keys are read from; ``DownstreamRequest`` has them all."""

    method: bytes
    authority: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    client_address: tuple[str, int]


@attrs.frozen
class KeySpec:
    """A parsed spec: ``kind`` (``path``, ``authority``, ``method``, ``cid``, ``peer_ip``,
    ``bearer_token``, ``header``, ``cookie``, ``query``) and, for the last three, ``name``
    (lower-cased: every name matches case-insensitively)."""

    kind: str
    name: str = ""


def parse_key_spec(text: str) -> KeySpec:
    """Parse a key spec; raises ValueError (a message for the config error) when Spooky
    would reject it."""
    spec = text.strip()
    lower = spec.lower()
    kind = _PLAIN.get(lower)
    if kind is not None:
        return KeySpec(kind)
    source, colon, name = lower.partition(":")
    source = source.strip()
    if colon and source in _NAMED:
        name = name.strip()
        if not name:
            raise ValueError(f"invalid key {text!r}: {source}: needs a name")
        return KeySpec(source, name)
    raise ValueError(
        f"invalid key {text!r}: expected path, authority, method, cid, sticky-cid, peer_ip, client_ip, "
        "bearer_token, header:<name>, cookie:<name> or query:<name>"
    )


#: reads a key from a request, or None when the request does not carry it
KeyReader = Callable[[KeyRequest], "str | None"]


def _text(value: bytes) -> str | None:
    """``value`` as text when it is non-empty visible ASCII (or tab), else None."""
    if not value or not value.isascii():
        return None
    for byte in value:
        if byte < 0x20 and byte != 0x09 or byte == 0x7F:
            return None
    return value.decode("ascii")


def _first_header(request: KeyRequest, name: bytes) -> bytes | None:
    for field, value in request.headers:
        if field == name:
            return value
    return None


def _path(request: KeyRequest) -> str | None:
    return request.path.partition(b"?")[0].decode("latin-1") or None


def _authority(request: KeyRequest) -> str | None:
    return request.authority.decode("latin-1") or None


def _method(request: KeyRequest) -> str | None:
    return request.method.decode("latin-1") or None


def _cid(request: KeyRequest) -> str | None:
    return None


def _peer_ip(request: KeyRequest) -> str | None:
    return request.client_address[0] or None


def bearer_token(value: bytes) -> str | None:
    """The token of an ``Authorization`` value with the ``Bearer`` scheme, else None."""
    text = _text(value.strip())
    if text is None:
        return None
    for index, char in enumerate(text):
        if char.isspace():
            if text[:index].lower() != "bearer":
                return None
            return text[index:].strip() or None
    return None


def _bearer(request: KeyRequest) -> str | None:
    value = _first_header(request, b"authorization")
    return None if value is None else bearer_token(value)


def _header(name: str) -> KeyReader:
    field = name.encode("latin-1")

    def read(request: KeyRequest) -> str | None:
        value = _first_header(request, field)
        return None if value is None else _text(value)

    return read


def _cookie(name: str) -> KeyReader:
    def read(request: KeyRequest) -> str | None:
        for field, value in request.headers:
            if field != b"cookie":
                continue
            for pair in value.split(b";"):
                pair = pair.strip()
                if not pair:
                    continue
                cookie, eq, cookie_value = pair.partition(b"=")
                if not eq:
                    return None
                if cookie.strip().lower().decode("latin-1") == name:
                    return _text(cookie_value.strip())
        return None

    return read


def _query(name: str) -> KeyReader:
    def read(request: KeyRequest) -> str | None:
        _, mark, query = request.path.partition(b"?")
        if not mark:
            return None
        for pair in query.split(b"&"):
            pair = pair.strip()
            if not pair:
                continue
            param, eq, value = pair.partition(b"=")
            if not eq:
                return None
            if value and param.lower().decode("latin-1") == name:
                return _text(value)
        return None

    return read


_READERS: dict[str, KeyReader] = {
    "path": _path,
    "authority": _authority,
    "method": _method,
    "cid": _cid,
    "peer_ip": _peer_ip,
    "bearer_token": _bearer,
}


def key_reader(spec: KeySpec) -> KeyReader:
    """The reader of a parsed spec (see the module docstring)."""
    if spec.kind == "header":
        return _header(spec.name)
    if spec.kind == "cookie":
        return _cookie(spec.name)
    if spec.kind == "query":
        return _query(spec.name)
    return _READERS[spec.kind]


def fallback_key(request: KeyRequest) -> str:
    """Spooky's fallback when a spec yields nothing: the authority, else the full path
    (with the query), else the method; empty only when all three are."""
    return (request.authority or request.path or request.method).decode("latin-1")
