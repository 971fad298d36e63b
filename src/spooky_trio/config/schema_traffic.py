"""Route matchers and per-pool traffic policy (extensions.md section 1), as frozen attrs
classes. Every key here is ours (*ext*): Spooky routes on host, path prefix and method only.

* :class:`MatcherConfig`: one entry of ``route.headers`` / ``route.query`` /
  ``route.cookies``; all of a route's matchers must hold (AND).
* :class:`TrafficPolicyConfig`: ``upstream.<pool>.traffic_policy``: weighted ``split`` to
  other pools (``split_key`` for stickiness), ``mirror`` copies, ``fault`` injection,
  request and response header rewrites, a path-prefix ``rewrite``, and the local answers
  ``direct_response`` and ``redirect``.

The rules (which combinations are allowed, ranges, names and values checked with the
request validator's rules) are in :mod:`spooky_trio.config.validate_traffic`; what each key
does at run time is docs/traffic-policy.md.
"""

from __future__ import annotations

import attrs

from spooky_trio.config.markers import EXT

#: the value kinds of a matcher, in the order its description names them
MATCH_KINDS = ("exact", "prefix", "suffix", "regex", "present")


@attrs.frozen(kw_only=True)
class MatcherConfig:
    """One header, query or cookie matcher: ``name`` and exactly one of ``exact``,
    ``prefix``, ``suffix``, ``regex`` (Python ``re``, full match) or ``present``;
    ``invert`` negates the result (a missing field included)."""

    name: str = attrs.field(metadata=EXT)
    exact: str | None = attrs.field(default=None, metadata=EXT)
    prefix: str | None = attrs.field(default=None, metadata=EXT)
    suffix: str | None = attrs.field(default=None, metadata=EXT)
    regex: str | None = attrs.field(default=None, metadata=EXT)
    present: bool | None = attrs.field(default=None, metadata=EXT)
    invert: bool = attrs.field(default=False, metadata=EXT)

    def kinds(self) -> list[str]:
        """The value kinds written (a valid matcher has exactly one)."""
        return [kind for kind in MATCH_KINDS if getattr(self, kind) is not None]


@attrs.frozen(kw_only=True)
class SplitConfig:
    """``split[]``: ``percent`` of the requests the route gives this pool go to ``pool``."""

    pool: str = attrs.field(metadata=EXT)
    percent: float = attrs.field(metadata=EXT)


@attrs.frozen(kw_only=True)
class MirrorConfig:
    """``mirror``: a copy of ``percent`` of the requests goes to ``pool``; its answer is
    discarded and it never holds up, slows or fails the request it copies."""

    pool: str = attrs.field(metadata=EXT)
    percent: float = attrs.field(default=100.0, metadata=EXT)
    #: a request body larger than this is not copied (counted)
    max_body_bytes: int = attrs.field(default=65536, metadata=EXT)
    #: copies of this pool's requests in flight at once; beyond it a copy is dropped (counted)
    max_inflight: int = attrs.field(default=64, metadata=EXT)
    #: bounds a whole copy (waiting for the body included)
    timeout_ms: int = attrs.field(default=2000, metadata=EXT)


@attrs.frozen(kw_only=True)
class FaultDelayConfig:
    """``fault.delay``: ``percent`` of the requests wait ``fixed_ms`` first."""

    fixed_ms: int = attrs.field(metadata=EXT)
    percent: float = attrs.field(default=100.0, metadata=EXT)


@attrs.frozen(kw_only=True)
class FaultAbortConfig:
    """``fault.abort``: ``percent`` of the requests are answered ``status`` by the proxy."""

    status: int = attrs.field(metadata=EXT)
    percent: float = attrs.field(default=100.0, metadata=EXT)


@attrs.frozen(kw_only=True)
class FaultConfig:
    """``fault``: delays and aborts for chaos testing (never a production default)."""

    delay: FaultDelayConfig | None = attrs.field(default=None, metadata=EXT)
    abort: FaultAbortConfig | None = attrs.field(default=None, metadata=EXT)
    #: a testing tool: true lets a client force a fault with ``x-spooky-fault-delay-ms`` /
    #: ``x-spooky-fault-abort``
    header_control: bool = attrs.field(default=False, metadata=EXT)
    #: requests in a fault (delayed or aborted) at once; beyond it no fault is injected
    max_active: int = attrs.field(default=100, metadata=EXT)


@attrs.frozen(kw_only=True)
class HeaderRewriteConfig:
    """``request_headers`` / ``response_headers``: ``remove`` names, then ``set`` (replaces
    every copy), then ``add`` (appends)."""

    set: dict[str, str] = attrs.field(factory=dict, metadata=EXT)
    add: dict[str, str] = attrs.field(factory=dict, metadata=EXT)
    remove: list[str] = attrs.field(factory=list, metadata=EXT)


@attrs.frozen(kw_only=True)
class PathRewriteConfig:
    """``rewrite``: the backend gets the path with the route's ``path_prefix`` replaced."""

    path_prefix: str = attrs.field(metadata=EXT)


@attrs.frozen(kw_only=True)
class DirectResponseConfig:
    """``direct_response``: the proxy answers every request of the pool itself."""

    status: int = attrs.field(metadata=EXT)
    body: str | None = attrs.field(default=None, metadata=EXT)
    headers: dict[str, str] = attrs.field(factory=dict, metadata=EXT)


@attrs.frozen(kw_only=True)
class RedirectConfig:
    """``redirect``: answer ``status`` with ``Location`` from the template ``location``
    (``{path}``, ``{query}``, ``{uri}``, ``{host}``)."""

    location: str = attrs.field(metadata=EXT)
    status: int = attrs.field(default=302, metadata=EXT)


@attrs.frozen(kw_only=True)
class TrafficPolicyConfig:
    """``upstream.<pool>.traffic_policy`` (extensions.md section 1). Policy belongs to the
    pool the route chose; a pool reached by a split lends only its backends, limits, health
    and balancing."""

    split: list[SplitConfig] = attrs.field(factory=list, metadata=EXT)
    #: a Spooky key spec; the same key always lands on the same side
    split_key: str | None = attrs.field(default=None, metadata=EXT)
    mirror: MirrorConfig | None = attrs.field(default=None, metadata=EXT)
    fault: FaultConfig | None = attrs.field(default=None, metadata=EXT)
    request_headers: HeaderRewriteConfig | None = attrs.field(default=None, metadata=EXT)
    response_headers: HeaderRewriteConfig | None = attrs.field(default=None, metadata=EXT)
    rewrite: PathRewriteConfig | None = attrs.field(default=None, metadata=EXT)
    direct_response: DirectResponseConfig | None = attrs.field(default=None, metadata=EXT)
    redirect: RedirectConfig | None = attrs.field(default=None, metadata=EXT)

    @property
    def answers_locally(self) -> bool:
        """The pool answers every request itself (``direct_response`` or ``redirect``)."""
        return self.direct_response is not None or self.redirect is not None

    def targets(self) -> list[str]:
        """The pools this policy sends requests (``split``) or copies (``mirror``) to."""
        return [entry.pool for entry in self.split] + ([self.mirror.pool] if self.mirror is not None else [])


#: what a ``redirect.location`` template may hold in braces (extensions.md section 7)
LOCATION_PLACEHOLDERS = ("path", "query", "uri", "host")


def split_location(template: str) -> list[tuple[bool, str]]:
    """``template`` as (is_placeholder, text) parts; raises ValueError for an unknown
    placeholder or a lone brace (the message is for the operator's config error)."""
    parts: list[tuple[bool, str]] = []
    rest = template
    while rest:
        open_at, close_at = rest.find("{"), rest.find("}")
        if open_at == -1:
            if close_at != -1:
                raise ValueError("a '}' without its '{'")
            parts.append((False, rest))
            break
        if close_at != -1 and close_at < open_at:
            raise ValueError("a '}' without its '{'")
        if open_at:
            parts.append((False, rest[:open_at]))
        end = rest.find("}", open_at)
        if end == -1:
            raise ValueError("a '{' without its '}'")
        name = rest[open_at + 1:end]
        if name not in LOCATION_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}: use {', '.join('{' + p + '}' for p in LOCATION_PLACEHOLDERS)}")
        parts.append((True, name))
        rest = rest[end + 1:]
    return parts
