"""Hash keys: which bytes of a request a hashing balancer hashes (``load_balancing.key``).

``header:<name>``  all values of that header, joined with ", " (name case-insensitive)
``cookie:<name>``  that cookie's value, from every ``cookie`` header (HTTP/2 and HTTP/3 split them)
``query:<name>``   the first value of that query parameter, percent-decoded
``path``           the path without the query string
``authority``      ``:authority`` (or Host), lower-cased: host names are case-insensitive
``method``         the request method
``cid``            the client's QUIC original destination connection ID

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
                if eq and cookie_name == name:
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
            if _unquote(param) == name:
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


def default_key(request: PickRequest) -> bytes:
    """Authority, else path, else method (the spec's default hash key)."""
    return _authority(request) or _path(request) or request.method


def key_source(spec: str | None) -> KeySource:
    """The extractor for a validated ``load_balancing.key`` (None: the default chain).

    Raises ValueError for a key the config validator would have rejected.
    """
    if spec is None:
        return default_key
    plain: dict[str, KeySource] = {"path": _path, "authority": _authority, "method": _method, "cid": _cid}
    if spec in plain:
        return plain[spec]
    kind, colon, name = spec.partition(":")
    if colon and name:
        if kind == "header":
            return _header(name.lower().encode("ascii"))
        if kind == "cookie":
            return _cookie(name.encode("ascii"))
        if kind == "query":
            return _query(name.encode("utf-8"))
    raise ValueError(f"invalid load_balancing.key {spec!r}")


def request_key(source: KeySource, request: PickRequest) -> bytes:
    """The key ``source`` extracts, falling back to :func:`default_key` when it is absent."""
    key = source(request)
    return key if key is not None else default_key(request)
