"""JWT verification with Spooky's exact rules (spooky-head.md section 1) and JWKS keys
(extensions.md sections 4 and 7).

A token is three unpadded base64url segments. Its header is a JSON object whose ``alg`` is
one of the configured algorithms (never ``none``: no configuration can name it); its
signature over ``header.payload`` is checked by PyJWT's algorithm objects (``cryptography``
underneath, ``hmac.compare_digest`` for HMAC): never our own crypto. The key comes from the
``alg`` family, so algorithm confusion cannot happen: an HMAC ``alg`` is only ever checked
with ``jwt.secret``, an asymmetric one only with a JWKS key that may verify that ``alg``
(an HMAC token "signed" with an RSA public key finds no HMAC key but the secret). Then the
payload (a JSON object) passes :func:`~spooky_trio.auth.claims.claims_refusal`.

PyJWT's own ``jwt.decode`` is not used as a whole: it accepts padded segments and numeric
strings for ``exp``, and rejects non-integer ``iat`` that Spooky ignores, so the compact
form and the claims are read here, the signature there.

A signature once verified is remembered (:class:`VerifiedSignatures`): the same token
bytes checked again with the same key object skip the public-key operation, which was most
of the cost of a JWT request (an RS256 verify is ~40 us; issue 22), and the reading of their
header. Only those are skipped: the payload is decoded and its claims (``exp``, ``nbf``,
issuer, audience) are checked on every request. A remembered entry names the key that
verified it, so a JWKS refresh (new key objects) or a removed key means a full check again;
a new generation starts with an empty memory.
"""

from __future__ import annotations

import binascii
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import attrs
from jwt.algorithms import Algorithm

from spooky_trio.auth.claims import Claims, claims_refusal
from spooky_trio.auth.credentials import MALFORMED
from spooky_trio.auth.jwks import ALGORITHMS, JwksCache
from spooky_trio.config.schema_auth import HMAC_ALGORITHMS, JwtAuthConfig

ALGORITHM = "auth_algorithm"
INVALID_SIGNATURE = "auth_invalid_signature"
UNKNOWN_KID = "auth_unknown_kid"
#: no JWKS key was ever fetched (answered 503, not 401: the token may well be valid)
JWKS_UNAVAILABLE = "auth_jwks_unavailable"

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class TokenRefused(Exception):
    """The token is not accepted; ``reason`` names why (the access log's ``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64decode(segment: bytes) -> bytes:
    """An unpadded base64url segment (canonical: no stray bits), or :class:`TokenRefused`.
    binascii directly: the ``base64`` module's wrappers cost six Python calls a segment."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenRefused(MALFORMED)
    padded = segment.translate(_TO_STANDARD) + b"=" * (-len(segment) % 4)
    decoded = binascii.a2b_base64(padded)
    if binascii.b2a_base64(decoded, newline=False) != padded:
        raise TokenRefused(MALFORMED)
    return decoded


@attrs.frozen(slots=True)
class ParsedToken:
    """A token split and its header read; nothing is verified yet (frozen: a remembered one
    is shared by the requests that carry the same token)."""

    alg: str
    kid: str | None
    signing_input: bytes
    signature: bytes
    payload_segment: bytes
    #: the whole compact token (the :class:`VerifiedSignatures` key)
    raw: bytes

    @property
    def hmac(self) -> bool:
        return self.alg in HMAC_ALGORITHMS


KeyList = Sequence[tuple[Algorithm, object]]
VerifyingKey = tuple[Algorithm, object]

#: how many verified signatures one pool remembers (least recently used forgotten first)
VERIFIED_ENTRIES = 1024
#: a token longer than this is verified every time. An entry holds the token and its parsed
#: parts, ~3x its length (tracemalloc, 1024 entries): 12 MiB per pool if every remembered
#: token is this long, 3.4 MiB with typical 1 KiB tokens
VERIFIED_MAX_TOKEN = 4096


class VerifiedSignatures:
    """Token bytes -> the key whose check of their signature succeeded and the token as
    parsed, bounded LRU (module docstring). Only successful checks are remembered, so only
    holders of valid tokens can fill it; a miss costs one dict lookup."""

    __slots__ = ("_entries", "capacity", "max_token")

    def __init__(self, capacity: int = VERIFIED_ENTRIES, max_token: int = VERIFIED_MAX_TOKEN) -> None:
        self._entries: OrderedDict[bytes, tuple[VerifyingKey, ParsedToken]] = OrderedDict()
        self.capacity = capacity
        self.max_token = max_token

    def __len__(self) -> int:
        return len(self._entries)

    def parsed(self, token: bytes) -> ParsedToken | None:
        """``token`` as :meth:`JwtVerifier.parse` read it when its signature was verified."""
        entry = self._entries.get(token)
        return entry[1] if entry is not None else None

    def known(self, token: bytes, keys: KeyList) -> bool:
        """Was ``token``'s signature verified by one of ``keys`` (the very key objects)?"""
        entry = self._entries.get(token)
        if entry is None:
            return False
        verified_by = entry[0]
        if not any(verified_by is key for key in keys):
            del self._entries[token]  # its key is gone (rotated out or refetched)
            return False
        self._entries.move_to_end(token)
        return True

    def remember(self, token: ParsedToken, key: VerifyingKey) -> None:
        if len(token.raw) > self.max_token or self.capacity <= 0:
            return
        self._entries[token.raw] = (key, token)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class JwtVerifier:
    """``auth.jwt`` of one pool, built once per generation. ``jwks`` is the cache of
    ``jwks_uri`` (None without one); ``clock`` is the wall clock (seconds since the epoch)."""

    def __init__(self, config: JwtAuthConfig, jwks: JwksCache | None, clock: Callable[[], float] = time.time) -> None:
        self.allowed = frozenset(config.effective_algorithms())
        self.skew = config.clock_skew_secs
        self.issuer = config.issuer
        self.audience = config.audience
        self.jwks = jwks
        self.clock = clock
        self.verified = VerifiedSignatures()
        #: alg -> (PyJWT algorithm, prepared secret) for the HMAC algorithms allowed
        self._hmac: dict[str, tuple[Algorithm, object]] = {}
        if config.secret is not None:
            secret = config.secret.strip().encode("utf-8")
            for alg in self.allowed & set(HMAC_ALGORITHMS):
                algorithm = ALGORITHMS[alg]
                # raises InvalidKeyError for a PEM or SSH public key: HMAC with a public key
                # is the algorithm-confusion attack (validate_auth rejects such a secret too)
                self._hmac[alg] = (algorithm, algorithm.prepare_key(secret))

    def parse(self, token: str) -> ParsedToken:
        """Split ``token`` and read its header; raises :class:`TokenRefused`."""
        raw = token.encode("ascii")
        known = self.verified.parsed(raw)
        if known is not None:  # read (the same way) when its signature was verified
            return known
        parts = raw.split(b".")
        if len(parts) != 3:
            raise TokenRefused(MALFORMED)
        try:
            header: object = json.loads(_b64decode(parts[0]).decode("utf-8"))
        except (ValueError, RecursionError):
            raise TokenRefused(MALFORMED) from None
        if not isinstance(header, dict):
            raise TokenRefused(MALFORMED)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.allowed:
            raise TokenRefused(ALGORITHM)
        if "crit" in header or (kid is not None and not isinstance(kid, str)):
            raise TokenRefused(MALFORMED)  # no critical extension is understood here (RFC 7515 4.1.11)
        signature = _b64decode(parts[2])
        return ParsedToken(alg, kid, raw[: len(parts[0]) + 1 + len(parts[1])], signature, parts[1], raw)

    def keys_for(self, token: ParsedToken) -> KeyList:
        """The keys that may verify ``token`` now (empty: a JWKS key not (yet) known)."""
        if token.hmac:
            key = self._hmac.get(token.alg)
            return (key,) if key is not None else ()
        if self.jwks is None:
            return ()
        return self.jwks.lookup(token.kid, token.alg)

    def verify(self, token: ParsedToken, keys: KeyList) -> Claims:
        """The claims of ``token`` once a key of ``keys`` verified its signature and the
        claims passed Spooky's rules; raises :class:`TokenRefused`."""
        if not keys:
            if token.hmac or self.jwks is None:
                raise TokenRefused(ALGORITHM)
            raise TokenRefused(UNKNOWN_KID if self.jwks.has_keys else JWKS_UNAVAILABLE)
        if not self.verified.known(token.raw, keys):
            for entry in keys:
                if entry[0].verify(token.signing_input, entry[1], token.signature):
                    self.verified.remember(token, entry)
                    break
            else:
                raise TokenRefused(INVALID_SIGNATURE)
        try:
            payload: object = json.loads(_b64decode(token.payload_segment).decode("utf-8"))
        except (ValueError, RecursionError):
            raise TokenRefused(MALFORMED) from None
        if not isinstance(payload, dict):
            raise TokenRefused(MALFORMED)
        refusal = claims_refusal(payload, self.clock(), skew=self.skew, issuer=self.issuer, audience=self.audience)
        if refusal is not None:
            raise TokenRefused(refusal)
        return payload
