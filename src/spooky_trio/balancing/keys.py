"""Hash keys: which bytes of a request a hashing balancer hashes (``load_balancing.key``).

``header:<name>``  all values of that header, joined with ", " (name case-insensitive)
``cookie:<name>``  that cookie's value, from every ``cookie`` header (HTTP/2 and HTTP/3 split
                   them; name case-insensitive, as Spooky's key specs are)
``query:<name>``   the first value of that query parameter, percent-decoded (name
                   case-insensitive)
``path``           the path without the query string
``authority``      ``:authority`` (or Host), lower-cased: host names are case-insensitive
``method``         the request method
``cid``            the client's QUIC original destination connection ID (also ``sticky-cid``)
``peer_ip``        the transport peer's IP address (also ``client_ip``; never X-Forwarded-For).
                   Spooky does not resolve this source when balancing and falls back; we hash it
``bearer_token``   the token of the first ``Authorization`` header whose scheme is ``Bearer``

The grammar (aliases, case rules) is :mod:`spooky_trio.config.keyspec`.

When the configured source is absent from a request (no such header, an HTTP/1.1 request
for ``cid``) the default chain applies: authority, else path, else method. Keys are hashed
with BLAKE2b, never with ``hash()``, which is salted per process and would reshuffle every
key on each restart and differ between worker processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from spooky_trio.balancing.base import PickRequest
from spooky_trio.config.keyspec import parse_key_spec

#: extracts a key from a request, or None when the request does not carry it
KeySource = Callable[[PickRequest], bytes | None]


def hash64(data: bytes) -> int:
    """A stable, well-mixed 64-bit hash of ``data`` (identical across processes and runs)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _header(name: bytes) -> KeySource:
    def source(request: PickRequest) -> bytes | None:
        values = [v for n, v in request.headers if n == name]
        return b", ".join(values) if values else None

    return source


def _cookie(name: bytes) -> KeySource:
    def source(request: PickRequest) -> bytes | None:
        for header, value in request.headers:
            if header != b"cookie":
                continue
            for pair in value.split(b";"):
                cookie_name, eq, cookie_value = pair.strip().partition(b"=")
                if eq and cookie_name.lower() == name:
                    return cookie_value.strip(b'"')
        return None

    return source


def _unquote(text: bytes) -> bytes:
    return unquote_to_bytes(text.replace(b"+", b" "))


def _query(name: bytes) -> KeySource:
    def source(request: PickRequest) -> bytes | None:
        _, mark, query = request.path.partition(b"?")
        if not mark:
            return None
        for pair in query.split(b"#", 1)[0].split(b"&"):
            param, _, value = pair.partition(b"=")
            if _unquote(param).lower() == name:
                return _unquote(value)
        return None

    return source


def _path(request: PickRequest) -> bytes | None:
    return request.path.split(b"?", 1)[0] or None


def _authority(request: PickRequest) -> bytes | None:
    return request.authority.lower() or None


def _method(request: PickRequest) -> bytes | None:
    return request.method or None


def _cid(request: PickRequest) -> bytes | None:
    return request.quic_connection_id or None


def _peer_ip(request: PickRequest) -> bytes | None:
    return request.client_address[0].encode() or None


def _bearer_token(request: PickRequest) -> bytes | None:
    for name, value in request.headers:
        if name == b"authorization":  # only the first one counts, as in Spooky's auth
            parts = value.split(None, 1)
            if len(parts) != 2 or parts[0].lower() != b"bearer":
                return None
            return parts[1].strip() or None
    return None


_PLAIN: dict[str, KeySource] = {
    "path": _path,
    "authority": _authority,
    "method": _method,
    "cid": _cid,
    "peer_ip": _peer_ip,
    "bearer_token": _bearer_token,
}


def default_key(request: PickRequest) -> bytes:
    """Authority, else path, else method (the spec's default hash key)."""
    return _authority(request) or _path(request) or request.method


def key_source(spec: str | None) -> KeySource:
    """The extractor for a validated ``load_balancing.key`` (None: the default chain).

    Raises ValueError for a key the config validator would have rejected.
    """
    if spec is None:
        return default_key
    parsed = parse_key_spec(spec)
    name = parsed.name
    if parsed.kind == "header":
        return _header(name.encode())
    if parsed.kind == "cookie":
        return _cookie(name.encode())
    if parsed.kind == "query":
        return _query(name.encode())
    return _PLAIN[parsed.kind]


def request_key(source: KeySource, request: PickRequest) -> bytes:
    """The key ``source`` extracts, falling back to :func:`default_key` when it is absent."""
    key = source(request)
    return key if key is not None else default_key(request)
