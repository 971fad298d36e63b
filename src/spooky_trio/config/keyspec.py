"""Request key specs: which part of a request a key is taken from (spooky-head.md sections 2-3).

One grammar for every key a config writes (``load_balancing.key`` today; the scoped rate
limits' ``key`` uses the same one). The spec is trimmed and compared case-insensitively:

``path`` ``authority`` ``method`` ``cid`` ``peer_ip`` ``bearer_token``
    plain sources; ``sticky-cid`` means ``cid`` and ``client_ip`` means ``peer_ip`` (the
    transport peer's address, never X-Forwarded-For)
``header:NAME`` ``cookie:NAME`` ``query:NAME``
    a named source; NAME must not be blank and is matched case-insensitively

Spooky rejects the near misses ``sticky_cid``, ``peer-ip``, ``client-ip`` and
``bearer-token``, and so do we (with a hint). A NAME that no request can carry (a header
name with a space) is accepted, as Spooky accepts it: it never matches, so the key falls
back to the default chain.
"""

from __future__ import annotations

from typing import Literal

import attrs

KeyKind = Literal["path", "authority", "method", "cid", "peer_ip", "bearer_token", "header", "cookie", "query"]

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


@attrs.frozen
class KeySpec:
    """A parsed key spec: ``kind`` and, for header/cookie/query, the lower-cased ``name``."""

    kind: KeyKind
    name: str = ""


def parse_key_spec(text: str) -> KeySpec:
    """Parse a key spec, or raise ``ValueError`` with a message for the operator."""
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
