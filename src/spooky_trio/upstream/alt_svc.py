"""``upstream_protocol: alt-svc``: HTTP/2 until the backend advertises HTTP/3, then HTTP/3,
and back to HTTP/2 while HTTP/3 is broken.

* **Learning** (:class:`AltSvcCache`, RFC 7838): every answer of an alt-svc backend is
  read for ``Alt-Svc``. An ``h3`` alternative is kept for its ``ma`` (default 24 hours)
  and refreshed by each answer that repeats it; ``clear`` forgets it (its connections
  drain); an answer without the field changes nothing. The alternative's host, when it
  names one, is dialled, and the certificate must still be valid for the backend's own
  host (the origin).
* **Moving** (:class:`AltSvcRouter`): the first answer naming an alternative starts one
  QUIC dial in the background; requests go over HTTP/3 as soon as that connection is
  ready, over HTTP/2 until then (and whenever no HTTP/3 stream is free at once: alt-svc
  never makes a request wait for HTTP/3).
* **Broken** (``extensions.md`` section 2): a failed dial, or a QUIC connection lost
  under a request, marks HTTP/3 broken for the backend: 5 minutes at first, doubling on
  each failure in a row, at most a day; a success (a completed handshake) resets it. The
  request that met the failure is sent over HTTP/2 when the backend provably did not
  process it (bodiless and idempotent, or unacknowledged), else it fails like any lost
  connection. Each mark is logged and counted (``broken``), each request moved back
  counted (``fallback``).

The cache is a plain state machine with the time passed in; the router is what the pool's
``exchange`` calls for an alt-svc target.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Literal, Protocol

import attrs
import trio

from spooky_trio.http.messages import Headers, UpstreamRequest
from spooky_trio.upstream.common import BackendTarget, UpstreamResponse
from spooky_trio.upstream.errors import UpstreamError
from spooky_trio.upstream.h3_pool import H3Pool, H3Unavailable

log = logging.getLogger("spooky.upstream")

#: how long HTTP/3 stays broken after the first failure, and the cap of the doubling
BROKEN_INITIAL = 300.0
BROKEN_MAX = 86400.0
#: ``ma`` when the field gives none (RFC 7838 3.1)
DEFAULT_MAX_AGE = 86400

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*')
_AUTHORITY = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):([0-9]{1,5})$")


@attrs.frozen
class Alternative:
    """An advertised alternative: ``host`` None means the origin's own host."""

    protocol: str
    host: str | None
    port: int
    max_age: int


def parse_alt_svc(values: Iterable[bytes]) -> list[Alternative] | Literal["clear"] | None:
    """The alternatives of one answer's ``Alt-Svc`` fields (RFC 7838 3), in preference order;
    ``"clear"``; or None when the fields hold nothing usable. A malformed entry is skipped,
    not the whole field."""
    text = ",".join(value.decode("latin-1") for value in values).strip()
    if not text:
        return None
    if text == "clear":
        return "clear"
    out: list[Alternative] = []
    for entry in _split(text, ","):
        parts = _split(entry, ";")
        head = _VALUE.fullmatch(parts[0]) if parts else None
        if head is None or not head.group(2).startswith('"'):
            continue
        authority = _AUTHORITY.match(_unquote(head.group(2)))
        if authority is None:
            continue
        port = int(authority.group(3))
        if not 0 < port < 65536:
            continue
        max_age = DEFAULT_MAX_AGE
        for param in parts[1:]:
            match = _VALUE.fullmatch(param)
            if match is not None and match.group(1).lower() == "ma":
                digits = _unquote(match.group(2))
                max_age = int(digits) if digits.isdigit() else max_age
        host = authority.group(1) or authority.group(2) or None
        out.append(Alternative(_percent_decode(head.group(1)), host, port, max_age))
    return out or None


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _percent_decode(token: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), token)


@attrs.define
class _Entry:
    #: the HTTP/3 target of the learned alternative, None when none is known
    alternative: BackendTarget | None = None
    expires: float = 0.0
    broken_until: float = 0.0
    #: the last broken period (0: HTTP/3 worked since, or never failed)
    broken_for: float = 0.0


class AltSvcCache:
    """What each alt-svc origin advertised, and whether its HTTP/3 is broken (module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[BackendTarget, _Entry] = {}

    def observe(self, origin: BackendTarget, headers: Headers, now: float) -> BackendTarget | Literal["clear"] | None:
        """Read an answer's head: the HTTP/3 target it advertises (learned or refreshed),
        ``"clear"`` (the alternative was forgotten), or None (nothing changed)."""
        values = [value for name, value in headers if name == b"alt-svc"]
        if not values:
            return None
        parsed = parse_alt_svc(values)
        if parsed is None:
            return None
        entry = self._entries.get(origin)
        if parsed == "clear":
            if entry is None or entry.alternative is None:
                return None
            entry.alternative = None
            return "clear"
        chosen = next((alt for alt in parsed if alt.protocol == "h3"), None)
        if chosen is None:
            return None
        if entry is None:
            entry = self._entries[origin] = _Entry()
        connect_host = chosen.host if chosen.host is not None else origin.connect_host
        current = entry.alternative
        if current is None or current.port != chosen.port or current.connect_host != connect_host:
            entry.alternative = attrs.evolve(origin, protocol="h3", port=chosen.port, connect_host=connect_host)
        entry.expires = now + chosen.max_age
        return entry.alternative

    def alternative(self, origin: BackendTarget) -> BackendTarget | None:
        """The learned HTTP/3 target (expired or broken ones included)."""
        entry = self._entries.get(origin)
        return entry.alternative if entry is not None else None

    def usable(self, origin: BackendTarget, now: float) -> BackendTarget | None:
        """The HTTP/3 target new requests may use now: learned, not expired, not broken."""
        entry = self._entries.get(origin)
        if entry is None or entry.alternative is None or now >= entry.expires or now < entry.broken_until:
            return None
        return entry.alternative

    def broken(self, origin: BackendTarget, now: float) -> bool:
        entry = self._entries.get(origin)
        return entry is not None and now < entry.broken_until

    def mark_broken(self, origin: BackendTarget, now: float) -> float:
        """HTTP/3 failed for ``origin``: broken for 5 minutes, or twice the last period (at
        most a day) when it was broken before without a success since. Returns the period."""
        entry = self._entries.setdefault(origin, _Entry())
        entry.broken_for = min(BROKEN_MAX, entry.broken_for * 2) if entry.broken_for else BROKEN_INITIAL
        entry.broken_until = now + entry.broken_for
        return entry.broken_for

    def confirm(self, origin: BackendTarget) -> None:
        """HTTP/3 worked for ``origin``: the next failure starts the backoff afresh."""
        entry = self._entries.get(origin)
        if entry is not None:
            entry.broken_for = 0.0

    def retain(self, keep: set[BackendTarget]) -> set[BackendTarget]:
        """Forget origins not in ``keep``; return the alternatives of those kept."""
        for origin in [o for o in self._entries if o not in keep]:
            del self._entries[origin]
        return {e.alternative for e in self._entries.values() if e.alternative is not None}

    def broken_until(self) -> dict[str, float]:
        """origin address -> until when its HTTP/3 is broken (for the metrics)."""
        return {str(origin): e.broken_until for origin, e in self._entries.items()}


class _H2Exchange(Protocol):
    def __call__(
        self, target: BackendTarget, request: UpstreamRequest, *, connect_timeout: float, response_timeout: float
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]: ...


class AltSvcRouter:
    """The exchange of an alt-svc target: HTTP/3 when usable, else HTTP/2 (module docstring).

    ``h2_exchange(target, request, connect_timeout=, response_timeout=)`` is the pool's
    HTTP/2 exchange; ``clock`` the time source (trio's, or a test's)."""

    def __init__(self, h3: H3Pool, h2_exchange: _H2Exchange, clock: Callable[[], float] = trio.current_time) -> None:
        self.h3 = h3
        self.cache = AltSvcCache()
        self._h2_exchange = h2_exchange
        self._clock = clock
        self._warming: set[BackendTarget] = set()

    @contextlib.asynccontextmanager
    async def exchange(
        self, origin: BackendTarget, request: UpstreamRequest, *, connect_timeout: float, response_timeout: float
    ) -> AsyncIterator[UpstreamResponse]:
        alternative = self.cache.usable(origin, self._clock())
        if alternative is not None and self.h3.has_ready_session(alternative):
            try:
                async with self.h3.exchange(alternative, request, connect_timeout=connect_timeout,
                                            response_timeout=response_timeout, fallback=True) as response:
                    self._observe(origin, response.headers, connect_timeout)
                    yield response
                    return
            except H3Unavailable as exc:  # raised before anything was yielded: nothing reached the client
                if exc.broken:
                    self._broken(origin, alternative, exc)
                self.h3.stats[("fallback", str(origin))] += 1
        async with self._h2_exchange(origin, request, connect_timeout=connect_timeout, response_timeout=response_timeout) as response:
            self._observe(origin, response.headers, connect_timeout)
            yield response

    def _observe(self, origin: BackendTarget, headers: Headers, connect_timeout: float) -> None:
        now = self._clock()
        before = self.cache.alternative(origin)
        learned = self.cache.observe(origin, headers, now)
        if learned is None:
            return
        if learned == "clear" or (before is not None and learned != before):
            if before is not None:
                self.h3.close_target(before)  # its streams finish; new requests go elsewhere
            self.h3.stats[("alt_svc_cleared" if learned == "clear" else "alt_svc_changed", str(origin))] += 1
            if learned == "clear":
                return
        if before is None:
            self.h3.stats[("alt_svc_learned", str(origin))] += 1
            log.info("%s advertises HTTP/3 at %s", origin, learned)
        if (self.cache.usable(origin, now) is not None and learned not in self._warming
                and not self.h3.has_ready_session(learned) and not self.h3.dialing(learned) and self.h3.nursery is not None):
            self._warming.add(learned)
            self.h3.nursery.start_soon(self._warm, origin, learned, connect_timeout)

    async def _warm(self, origin: BackendTarget, alternative: BackendTarget, connect_timeout: float) -> None:
        """The dial an advertisement triggered, in the pool's nursery."""
        try:
            await self.h3.warm(alternative, connect_timeout)
        except UpstreamError as exc:
            self._broken(origin, alternative, exc)
        else:
            self.cache.confirm(origin)
        finally:
            self._warming.discard(alternative)

    def _broken(self, origin: BackendTarget, alternative: BackendTarget, exc: BaseException) -> None:
        period = self.cache.mark_broken(origin, self._clock())
        self.h3.close_target(alternative)
        self.h3.stats[("broken", str(origin))] += 1
        log.warning("HTTP/3 to %s (%s) marked broken for %gs, using HTTP/2: %s", origin, alternative, period, exc)
