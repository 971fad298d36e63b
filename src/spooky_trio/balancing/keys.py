"""Hash keys: which bytes of a request a hashing balancer hashes (``load_balancing.key``).

The grammar and the extraction are Spooky's key specs, shared with the scoped rate limits
and the config validator: :mod:`spooky_trio.http.request_keys` (what each spec reads, its
aliases and case rules). Two sources differ from the rate limits', by design:

``cid``      the client's QUIC original destination connection ID (also ``sticky-cid``;
             ``config.md`` lists it among the hash keys); the rate limits always fall back
``peer_ip``  the transport peer's IP address (also ``client_ip``; never X-Forwarded-For).
             Spooky does not resolve this source when balancing and falls back; we hash it
             (spooky-head.md section 3)

When the configured source yields nothing (no such header, an HTTP/1.1 request for ``cid``)
Spooky's fallback applies: the authority, else the full path, else the method. The key is
hashed as the bytes the request carried (latin-1 maps the key's text back to them), with
BLAKE2b, never with ``hash()``, which is salted per process and would reshuffle every key on
each restart and differ between worker processes.
"""

from __future__ import annotations

import hashlib

from spooky_trio.balancing.base import PickRequest
from spooky_trio.http.request_keys import KeyReader, fallback_key, key_reader, parse_key_spec

#: extracts a key from a request, or None when the request does not carry it
KeySource = KeyReader


def hash64(data: bytes) -> int:
    """A stable, well-mixed 64-bit hash of ``data`` (identical across processes and runs)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _nothing(request: PickRequest) -> str | None:
    return None


def default_key(request: PickRequest) -> bytes:
    """Authority, else full path, else method (Spooky's fallback, as bytes)."""
    return fallback_key(request).encode("latin-1")


def key_source(spec: str | None) -> KeySource:
    """The extractor for a validated ``load_balancing.key`` (None: always the fallback).

    Raises ValueError for a key the config validator would have rejected.
    """
    if spec is None:
        return _nothing
    return key_reader(parse_key_spec(spec), connection_ids=True)


def request_key(source: KeySource, request: PickRequest) -> bytes:
    """The key ``source`` extracts, falling back to :func:`default_key` when it yields nothing."""
    key = source(request)
    return key.encode("latin-1") if key is not None else default_key(request)
