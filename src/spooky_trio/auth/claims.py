"""What a verified token's claims must say (spooky-head.md section 1), the scopes and roles
they grant, and the ``forward_claims`` headers made from them (extensions.md section 7).

Plain functions over the decoded payload (a JSON object) and a wall-clock ``now`` in
seconds; nothing here verifies signatures (``tokens.py`` does, before these run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping

from spooky_trio.http.messages import Headers

log = logging.getLogger("spooky.auth")

EXPIRED = "auth_expired"
NOT_YET_VALID = "auth_not_yet_valid"
#: ``exp`` missing or not an integer >= 0
BAD_EXP = "auth_claims"
ISSUER = "auth_issuer"
AUDIENCE = "auth_audience"
SCOPE = "auth_scope"
ROLE = "auth_role"

Claims = Mapping[str, object]


def _non_negative_int(value: object) -> int | None:
    # JSON true/false are Python bools (an int subclass): not integers here
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def claims_refusal(claims: Claims, now: float, *, skew: int, issuer: str | None, audience: str | None) -> str | None:
    """None when ``claims`` pass Spooky's time and identity rules at ``now``, else the
    reason: ``exp`` an integer >= 0 with ``now <= exp + skew``; ``nbf`` and ``iat``, when
    integers >= 0 (else ignored), ``<= now + skew``; ``iss`` equal to ``issuer`` and ``aud``
    equal to ``audience`` or an array holding it, when those are configured."""
    exp = _non_negative_int(claims.get("exp"))
    if exp is None:
        return BAD_EXP
    if now > exp + skew:
        return EXPIRED
    for name in ("nbf", "iat"):
        moment = _non_negative_int(claims.get(name))
        if moment is not None and moment > now + skew:
            return NOT_YET_VALID
    if issuer is not None and claims.get("iss") != issuer:
        return ISSUER
    if audience is not None:
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            return AUDIENCE
    return None


def claim_values(claims: Claims, names: Iterable[str]) -> set[str]:
    """The values granted by the claims ``names``: each a space-separated string or an
    array of strings (other values are ignored)."""
    granted: set[str] = set()
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    return granted


def rbac_refusal(claims: Claims, scopes: frozenset[str], roles: frozenset[str]) -> str | None:
    """None when every required scope (claims ``scope`` + ``scp``) and role (``roles`` +
    ``role``) is granted, exactly; else :data:`SCOPE` or :data:`ROLE`."""
    if scopes and not scopes <= claim_values(claims, ("scope", "scp")):
        return SCOPE
    if roles and not roles <= claim_values(claims, ("roles", "role")):
        return ROLE
    return None


def _forbidden_in_header(text: str) -> bool:
    return any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in text)


def claim_header_value(value: object) -> str | None:
    """A claim as an upstream header value (extensions.md section 7): a string as is,
    numbers and booleans as JSON text, an array of strings joined with ``,``, anything else
    as compact JSON; None for a missing (null) claim."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value, separators=(",", ":"))


def forwarded_claims(claims: Claims, mapping: Iterable[tuple[str, bytes]], pool: str) -> Headers:
    """The headers ``mapping`` (claim -> lowercase header name) makes of ``claims``. A value
    with a control character (CR, LF, NUL and the rest but tab) is dropped and logged: it
    would split or corrupt the upstream head."""
    headers: Headers = []
    for claim, header in mapping:
        text = claim_header_value(claims.get(claim))
        if text is None:
            continue
        if _forbidden_in_header(text):
            log.warning("pool %s: claim %r holds a control character; header %s not sent", pool, claim, header.decode())
            continue
        headers.append((header, text.encode("utf-8")))
    return headers
