"""Spooky's request key specs: the one grammar and the one extraction of every key a config
writes (``load_balancing.key``, ``resilience.scoped_rate_limits[].key``; spooky-head.md
sections 2-3).

It lives in ``http/``, the lowest layer, because the three users sit in layers that may not
import each other: the config validator (:mod:`spooky_trio.config.validate`,
:mod:`spooky_trio.config.validate_ratelimit`) parses specs with :func:`parse_key_spec`; the
hashing balancers (:mod:`spooky_trio.balancing.keys`) and the scoped rate limits
(:mod:`spooky_trio.proxy.ratelimit`) read keys with :func:`key_reader` and
:func:`fallback_key`.

Grammar (the spec trimmed as a whole, ASCII case-insensitive, exactly what Spooky accepts)::

    path | authority | method | cid | sticky-cid | peer_ip | client_ip | bearer_token
    header:NAME | cookie:NAME | query:NAME            (NAME non-blank after trimming)

``sticky-cid`` means ``cid`` and ``client_ip`` means ``peer_ip``. Spooky rejects the near
misses ``sticky_cid``, ``peer-ip``, ``client-ip`` and ``bearer-token``, and so do we (with a
hint). A NAME that no request can carry (a header name with a space) is accepted, as Spooky
accepts it: it never matches, so the key falls back.

Extraction, Spooky's rules (a reader returns None when the request yields nothing):

* ``path``: the path without the query; ``authority``: ``:authority`` (Host on HTTP/1.1) as
  sent, case and port included; ``method``: the method.
* ``cid``/``sticky-cid``: Spooky never hands the QUIC connection ID to its rate-limit key
  resolver, so there it always falls back (``key_reader(spec)``). Balancing reads it
  (``key_reader(spec, connection_ids=True)``: the client's original destination connection
  ID; None on the TCP listener), as ``config.md`` lists ``cid`` among the hash keys.
* ``peer_ip``/``client_ip``: the transport peer's IP, never ``X-Forwarded-For``. (Spooky does
  not resolve it when balancing and falls back; we hash it: spooky-head.md section 3.)
* ``bearer_token``: the first ``Authorization`` field, when its scheme (up to the first
  whitespace) is ``bearer`` (case-insensitive): the rest, trimmed.
* ``header:NAME``: the first field of that name (one value, never the joined list).
* ``cookie:NAME``: from the ``cookie`` field(s), the first ``name=value`` pair whose name
  matches case-insensitively, value trimmed; a pair without ``=`` ends the search (Spooky's
  parser). Unlike Spooky, which reads only the first ``cookie`` field, every field is read
  (HTTP/2 and HTTP/3 clients may split cookies into several fields, RFC 9113 8.2.3).
* ``query:NAME``: the first ``name=value`` pair of the query whose name matches
  case-insensitively and whose value is not empty, not percent-decoded; a pair without ``=``
  ends the search (Spooky's parser).

A field value is used only when it is visible ASCII (and tab), as Spooky's ``to_str``; an
empty value counts as nothing. The caller applies the fallback when a reader returns None
(:func:`fallback_key`: the authority, else the full path, else the method).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol

import attrs

KeyKind = Literal["path", "authority", "method", "cid", "peer_ip", "bearer_token", "header", "cookie", "query"]

#: spec (lower case) -> kind, for the specs without a name
_PLAIN: dict[str, KeyKind] = {
    "path": "path",
    "authority": "authority",
    "method": "method",
    "cid": "cid",
    "sticky-cid": "cid",
    "peer_ip": "peer_ip",
    "client_ip": "peer_ip",
    "bearer_token": "bearer_token",
}
_NAMED: dict[str, KeyKind] = {"header": "header", "cookie": "cookie", "query": "query"}
_NEAR_MISSES = {"sticky_cid": "sticky-cid", "peer-ip": "peer_ip", "client-ip": "client_ip", "bearer-token": "bearer_token"}
_EXPECTED = (
    "expected header:<name>, cookie:<name>, query:<name>, path, authority, method, cid, "
    "sticky-cid, peer_ip, client_ip or bearer_token"
)


class KeyRequest(Protocol):
    """The request attributes keys are read from; ``DownstreamRequest`` has them all."""

    method: bytes
    authority: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    client_address: tuple[str, int]
    quic_connection_id: bytes | None


@attrs.frozen
class KeySpec:
    """A parsed spec: ``kind`` and, for header/cookie/query, the lower-cased ``name`` (every
    name matches case-insensitively)."""

    kind: KeyKind
    name: str = ""


def parse_key_spec(text: str) -> KeySpec:
    """Parse a key spec; raises ValueError (a message for the operator's config error) when
    Spooky would reject it."""
    folded = text.strip().lower()
    plain = _PLAIN.get(folded)
    if plain is not None:
        return KeySpec(plain)
    source, colon, name = folded.partition(":")
    kind = _NAMED.get(source) if colon else None
    if kind is None:
        hint = _NEAR_MISSES.get(folded)
        if hint is not None:
            raise ValueError(f"invalid key {text!r}: did you mean {hint!r}?")
        raise ValueError(f"invalid key {text!r}: {_EXPECTED}")
    if not name.strip():
        raise ValueError(f"invalid key {text!r}: {source}: needs a name")
    return KeySpec(kind, name.strip())


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


def _no_cid(request: KeyRequest) -> str | None:
    return None


def _cid(request: KeyRequest) -> str | None:
    # latin-1 maps each byte to one character: the balancer hashes the ID's own bytes
    cid = request.quic_connection_id
    return cid.decode("latin-1") if cid else None


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
    field = name.encode()  # a name outside ASCII is accepted (module docstring) and never matches

    def read(request: KeyRequest) -> str | None:
        value = _first_header(request, field)
        return None if value is None else _text(value)

    return read


def _named_value(pairs: Iterable[bytes], name: str, *, trim: bool, skip_empty: bool) -> str | None:
    """Spooky's ``name=value`` pair parser: the value of the first pair named ``name`` (any
    case); ``trim``: name and value trimmed (cookies); ``skip_empty``: a pair with an empty
    value is passed over (queries). A pair without ``=`` ends the search."""
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        key, eq, value = pair.partition(b"=")
        if not eq:
            return None
        if trim:
            key, value = key.strip(), value.strip()
        if skip_empty and not value:
            continue
        if key.lower().decode("latin-1") == name:
            return _text(value)
    return None


def _cookie(name: str) -> KeyReader:
    def read(request: KeyRequest) -> str | None:
        pairs = (pair for field, value in request.headers if field == b"cookie" for pair in value.split(b";"))
        return _named_value(pairs, name, trim=True, skip_empty=False)

    return read


def _query(name: str) -> KeyReader:
    def read(request: KeyRequest) -> str | None:
        _, mark, query = request.path.partition(b"?")
        return _named_value(query.split(b"&"), name, trim=False, skip_empty=True) if mark else None

    return read


_READERS: dict[str, KeyReader] = {
    "path": _path,
    "authority": _authority,
    "method": _method,
    "cid": _no_cid,
    "peer_ip": _peer_ip,
    "bearer_token": _bearer,
}


def key_reader(spec: KeySpec, *, connection_ids: bool = False) -> KeyReader:
    """The reader of a parsed spec (module docstring). ``connection_ids``: ``cid`` reads the
    QUIC connection ID (balancing) instead of always falling back (rate limits)."""
    if spec.kind == "header":
        return _header(spec.name)
    if spec.kind == "cookie":
        return _cookie(spec.name)
    if spec.kind == "query":
        return _query(spec.name)
    if spec.kind == "cid" and connection_ids:
        return _cid
    return _READERS[spec.kind]


def fallback_key(request: KeyRequest) -> str:
    """Spooky's fallback when a spec yields nothing: the authority, else the full path
    (with the query), else the method; empty only when all three are."""
    return (request.authority or request.path or request.method).decode("latin-1")
