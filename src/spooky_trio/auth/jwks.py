"""JWK Sets: parsed into verification keys, and cached with a refresher task.

:func:`parse_jwks` turns a JWK Set document into :class:`VerifyKey` objects, each with the
algorithms it may verify (PyJWT's algorithm objects over ``cryptography``; a key's own
``alg`` narrows them, extensions.md section 7). Never used: symmetric (``oct``) keys (HMAC is
never checked with a JWKS key), keys with private parts, keys whose ``use`` is not ``sig``,
RSA keys under 2048 bits (PyJWT's minimum).

:class:`JwksCache` is the state of one ``jwks_uri`` (times from the Trio clock, so
``MockClock`` drives the tests)::

    pending ──fetch ok──► fresh ──jwks_cache_secs──► refresh (background; keys kept)
       │                    ▲  └─unknown kid, last refetch >= jwks_min_refresh_secs ago─┐
       └─fetch failed──► retry after 1, 2, 4 ... s (at most jwks_min_refresh_secs)  ◄───┘
    a failed refresh keeps the last good keys (stale, counted) until one succeeds

The request path never fetches: it reads :meth:`JwksCache.lookup` and, for an unknown
``kid``, asks for a refetch (:meth:`JwksCache.want_refetch`: coalesced, at most one per
``jwks_min_refresh_secs``) and waits for it at most ``jwks_timeout_ms``
(:meth:`JwksCache.wait_fetch`). The fetch runs in :meth:`JwksCache.refresh_loop`, a task of
the :class:`~spooky_trio.auth.store.AuthStore`'s nursery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio
from jwt import PyJWK
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from spooky_trio.auth.outbound import OutboundError
from spooky_trio.auth.urls import redact_url

log = logging.getLogger("spooky.auth")

#: PyJWT's algorithm objects by ``alg`` (stateless; shared)
ALGORITHMS: Mapping[str, Algorithm] = get_default_algorithms()
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_BY_CURVE = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",), "Ed25519": ("EdDSA",), "Ed448": ("EdDSA",)}

#: a JWK Set bigger than this is refused (a body bound on every outbound call)
MAX_JWKS_BYTES = 512 * 1024


class JwksError(Exception):
    """A JWK Set could not be fetched or used (the message is safe to log)."""


@attrs.frozen(slots=True)
class VerifyKey:
    """One public key of a JWK Set: ``algorithms`` maps each ``alg`` it may verify to
    PyJWT's algorithm object and the prepared key."""

    kid: str | None
    algorithms: Mapping[str, tuple[Algorithm, object]]


def _candidates(jwk: Mapping[str, object]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    if kty == "RSA":
        found: tuple[str, ...] = _RSA
    elif kty in ("EC", "OKP"):
        found = _BY_CURVE.get(str(jwk.get("crv")), ())
    else:
        return ()  # "oct" (HMAC is never used with a JWKS key) and unknown types
    stated = jwk.get("alg")
    if stated is not None:
        return (stated,) if stated in found else ()
    return found


def parse_key(jwk: Mapping[str, object]) -> VerifyKey | None:
    """The :class:`VerifyKey` of one JWK, or None when it is not usable (module docstring)."""
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    algorithms: dict[str, tuple[Algorithm, object]] = {}
    for alg in _candidates(jwk):
        try:
            key = PyJWK(dict(jwk), algorithm=alg).key
            algorithm = ALGORITHMS[alg]
            prepared: object = algorithm.prepare_key(key)
            if algorithm.check_key_length(prepared) is not None:
                continue
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue
        algorithms[alg] = (algorithm, prepared)
    return VerifyKey(kid, algorithms) if algorithms else None


def parse_jwks(data: bytes) -> list[VerifyKey]:
    """The usable keys of a JWK Set document; raises :class:`JwksError` when it is not one
    or holds no usable key (the last good keys are then kept)."""
    try:
        document: object = json.loads(data)
    except (ValueError, RecursionError):
        raise JwksError("the JWK Set is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError("the document has no 'keys' array")
    keys = [key for key in (parse_key(entry) for entry in entries if isinstance(entry, dict)) if key is not None]
    if not keys:
        raise JwksError(f"none of the {len(entries)} keys is a usable public signing key")
    return keys


@attrs.frozen
class JwksSettings:
    """What identifies a cache (one per distinct setting; reloads keep it)."""

    uri: str
    ca_file: str | None
    #: sha256 of the CA bundle's content when the cache was made (a rewritten CA: a new cache)
    ca_digest: str
    cache_secs: float
    min_refresh_secs: float
    timeout: float


#: the call a refresher makes: the JWK Set document's bytes, or raise (bounded by a deadline)
Fetch = Callable[[], Awaitable[bytes]]


class JwksCache:
    """The keys of one JWK Set URL and the state of their refresh (module docstring)."""

    def __init__(self, settings: JwksSettings) -> None:
        self.settings = settings
        self._by_kid: dict[str, list[VerifyKey]] = {}
        self._all: list[VerifyKey] = []
        #: clock time of the last successful fetch (None: never)
        self.fetched_at: float | None = None
        #: clock time of the last refetch an unknown kid asked for
        self.last_trigger: float | None = None
        self.last_error: str | None = None
        #: a fetch is underway or the first one has not ended yet (requests may wait for it)
        self.pending = True
        self.fetches = 0
        self.failures = 0
        self._wake = trio.Event()
        self._done = trio.Event()

    @property
    def has_keys(self) -> bool:
        return bool(self._all)

    @property
    def kids(self) -> list[str]:
        return sorted(self._by_kid)

    def stale(self, now: float) -> bool:
        """The keys are older than ``jwks_cache_secs`` (refreshes have failed since)."""
        return self.fetched_at is not None and now - self.fetched_at > self.settings.cache_secs

    def install(self, keys: list[VerifyKey], now: float) -> None:
        """Use ``keys`` from now on (a fetch succeeded)."""
        by_kid: dict[str, list[VerifyKey]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self._by_kid, self._all, self.fetched_at, self.last_error = by_kid, keys, now, None

    def adopt(self, other: JwksCache) -> None:
        """Start with ``other``'s keys (the same URL under changed settings: a reload must
        not make tokens wait for a first fetch)."""
        self._by_kid, self._all, self.fetched_at = other._by_kid, other._all, other.fetched_at

    def lookup(self, kid: str | None, alg: str) -> list[tuple[Algorithm, object]]:
        """The keys that may verify a token with header ``kid`` (None: every key) and
        ``alg``; empty when none is known."""
        keys = self._by_kid.get(kid, ()) if kid is not None else self._all
        return [key.algorithms[alg] for key in keys if alg in key.algorithms]

    def want_refetch(self, now: float) -> bool:
        """A token names a key the cache does not hold: True when a fetch worth waiting for
        is underway or was just asked for; False when the last refetch was asked for less
        than ``jwks_min_refresh_secs`` ago (the token is then refused at once: a flood of
        random ``kid`` values costs the JWKS server at most one fetch per period). Before the
        first successful fetch the refresher's own retry schedule applies."""
        if self.pending or self._wake.is_set():
            return True
        if not self._all:
            return False
        if self.last_trigger is not None and now - self.last_trigger < self.settings.min_refresh_secs:
            return False
        self.last_trigger = now
        self._wake.set()
        return True

    async def wait_fetch(self, timeout: float) -> None:
        """Wait until the fetch underway (or the one just asked for) ends, at most ``timeout``."""
        done = self._done
        with trio.move_on_after(timeout):
            await done.wait()

    async def fetch_once(self, fetch: Fetch) -> bool:
        """One fetch (``fetch`` has its own deadline); True when new keys were installed."""
        self.pending = True
        self._wake = trio.Event()  # a refetch asked for from now on means the next fetch
        self.fetches += 1
        try:
            keys = parse_jwks(await fetch())
        except (JwksError, OutboundError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("JWKS %s: %s; %s", redact_url(self.settings.uri), exc,
                        "keeping the last good keys" if self._all else "no keys yet")
            return False
        else:
            self.install(keys, trio.current_time())
            log.info("JWKS %s: %d key(s) (%s)", redact_url(self.settings.uri), len(keys), ", ".join(self.kids) or "no kid")
            return True
        finally:
            self.pending = False
            done, self._done = self._done, trio.Event()
            done.set()

    async def refresh_loop(self, fetch: Fetch) -> None:
        """Fetch now, then every ``jwks_cache_secs`` and whenever a refetch is asked for;
        after a failure retry in 1, 2, 4 ... seconds (at most ``jwks_min_refresh_secs``, or
        ``jwks_cache_secs`` if shorter). Runs until cancelled."""
        settings = self.settings
        backoff = 1.0
        while True:
            if await self.fetch_once(fetch):
                delay, backoff = settings.cache_secs, 1.0
            else:
                delay = min(backoff, settings.min_refresh_secs, settings.cache_secs)
                backoff *= 2
            with trio.move_on_after(delay):
                await self._wake.wait()

    def snapshot(self, now: float) -> dict[str, object]:
        """For ``/admin/runtime``: no key material, the URL without credentials or query."""
        return {
            "uri": redact_url(self.settings.uri),
            "kids": self.kids,
            "keys": len(self._all),
            "age_seconds": None if self.fetched_at is None else round(now - self.fetched_at, 3),
            "stale": self.stale(now),
            "fetches": self.fetches,
            "failures": self.failures,
            "last_error": self.last_error,
        }

