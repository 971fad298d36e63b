"""Rules of the route matchers and of ``upstream.<pool>.traffic_policy`` (extensions.md
section 1; docs/traffic-policy.md). Every problem names its key path.

Header names and values a config writes follow the rules the request validator applies to
a client's (``http/validate.py``: a token; no control character but tab, no surrounding
whitespace) and ASCII; names the proxy owns on the way out are refused (hop-by-hop fields,
``host``, ``content-length``, the ``X-Forwarded-*`` fields and ``forwarded`` for requests).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config, PoolConfig
from spooky_trio.config.schema_traffic import (
    DirectResponseConfig,
    FaultConfig,
    HeaderRewriteConfig,
    MatcherConfig,
    MirrorConfig,
    RedirectConfig,
    TrafficPolicyConfig,
    split_location,
)
from spooky_trio.http.headers import HOP_BY_HOP as HOP_BY_HOP_FIELDS
from spooky_trio.http.request_keys import parse_key_spec
from spooky_trio.http.validate import field_name_error, field_value_error

#: connection-specific fields (RFC 9110 7.6.1): never set, added or removed by config
HOP_BY_HOP = frozenset(name.decode("ascii") for name in HOP_BY_HOP_FIELDS)
#: request fields the proxy itself writes (framing, authority, the forwarded_headers policy)
REQUEST_OWNED = HOP_BY_HOP | {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
#: response fields that carry framing
RESPONSE_OWNED = HOP_BY_HOP | {"content-length"}
#: redirect statuses (RFC 9110 15.4)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
#: the largest ``direct_response.body`` (bytes once encoded): every buffer has a bound
MAX_DIRECT_BODY = 65536
#: the keys a local answer (``direct_response``, ``redirect``) makes pointless
_FORWARDING_KEYS = ("split", "mirror", "fault", "request_headers", "rewrite")


def validate_traffic(out: Problems, config: Config) -> None:
    """Add every violation of the matchers and traffic policies of ``config`` to ``out``."""
    names = set(config.upstream)
    for name, pool in config.upstream.items():
        path: KeyPath = ("upstream", name)
        if pool.route is not None:
            for source in ("headers", "query", "cookies"):
                for index, matcher in enumerate(getattr(pool.route, source)):
                    _matcher(out, path + ("route", source, index), source, matcher)
        if pool.traffic_policy is not None:
            _policy(out, path + ("traffic_policy",), name, pool, pool.traffic_policy, names)


def referenced_pools(config: Config) -> dict[str, str]:
    """Pool name -> the first pool whose ``split`` or ``mirror`` names it."""
    found: dict[str, str] = {}
    for name, pool in config.upstream.items():
        if pool.traffic_policy is not None:
            for target in pool.traffic_policy.targets():
                found.setdefault(target, name)
    return found


def backends_optional(pool: PoolConfig) -> bool:
    """A pool that never forwards to its own backends: it answers itself, has no route
    (reachable only through a split or a mirror: extensions.md section 7) or splits every
    request elsewhere."""
    policy = pool.traffic_policy
    if pool.route is None:
        return True
    if policy is None:
        return False
    return policy.answers_locally or (bool(policy.split) and _basis_points(sum(s.percent for s in policy.split)) >= 10000)


def _basis_points(percent: float) -> int:
    return round(percent * 100)


def percent_error(value: float) -> str | None:
    """Why ``value`` is not a percent 0-100 with at most two decimals, or None."""
    if not math.isfinite(value) or not 0 <= value <= 100:
        return f"must be between 0 and 100 (got {value})"
    if abs(value * 100 - round(value * 100)) > 1e-6:
        return f"at most two decimals (got {value})"
    return None


def _percent(out: Problems, path: KeyPath, value: float) -> None:
    error = percent_error(value)
    if error:
        out.add(path, error)


def _matcher(out: Problems, path: KeyPath, source: str, matcher: MatcherConfig) -> None:
    name = matcher.name
    if not name.strip():
        out.add(path + ("name",), "must not be blank")
    elif source == "headers":
        error = field_name_error(name.encode("utf-8"))
        if error:
            out.add(path + ("name",), f"{name!r} is {error}")
    elif not name.isascii() or not name.isprintable() or any(c in name for c in " ;=&\t"):
        out.add(path + ("name",), f"{name!r}: a {'cookie' if source == 'cookies' else 'query'} name is visible ASCII without ' ', ';', '=', '&'")
    kinds = matcher.kinds()
    if len(kinds) != 1:
        which = ", ".join(kinds) if kinds else "none"
        out.add(path, f"exactly one of exact, prefix, suffix, regex, present is required (got {which})")
        return
    kind = kinds[0]
    if kind == "regex":
        assert matcher.regex is not None
        try:
            re.compile(matcher.regex)
        except re.error as exc:
            out.add(path + ("regex",), f"not a valid regular expression: {exc}")
    elif kind != "present":
        value: str = getattr(matcher, kind)
        if not value.isascii() or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
            out.add(path + (kind,), "must be ASCII without control characters (a request's field can never hold it)")


def _policy(out: Problems, path: KeyPath, name: str, pool: PoolConfig, policy: TrafficPolicyConfig, names: set[str]) -> None:
    seen: dict[str, int] = {}
    for index, entry in enumerate(policy.split):
        entry_path = path + ("split", index)
        _percent(out, entry_path + ("percent",), entry.percent)
        _target(out, entry_path + ("pool",), entry.pool, name, names, "split")
        if entry.pool in seen:
            out.add(entry_path + ("pool",), f"pool {entry.pool!r} is already split[{seen[entry.pool]}]")
        seen.setdefault(entry.pool, index)
    if policy.split and all(percent_error(e.percent) is None for e in policy.split):
        total = sum(_basis_points(e.percent) for e in policy.split)
        if total > 10000:
            out.add(path + ("split",), f"the split percents add up to {total / 100:g}, more than 100")
    if policy.split_key is not None:
        if not policy.split:
            out.add(path + ("split_key",), "only allowed with split")
        try:
            parse_key_spec(policy.split_key)
        except ValueError as exc:
            out.add(path + ("split_key",), str(exc))
    if policy.mirror is not None:
        _mirror(out, path + ("mirror",), policy.mirror, name, names)
    if policy.fault is not None:
        _fault(out, path + ("fault",), policy.fault)
    if policy.request_headers is not None:
        _rewrites(out, path + ("request_headers",), policy.request_headers, REQUEST_OWNED, "the proxy sets it on every request")
    if policy.response_headers is not None:
        _rewrites(out, path + ("response_headers",), policy.response_headers, RESPONSE_OWNED, "it frames the response")
    if policy.rewrite is not None:
        out.http_path(path + ("rewrite", "path_prefix"), policy.rewrite.path_prefix)
        if pool.route is None or pool.route.path_prefix is None:
            out.add(path + ("rewrite", "path_prefix"), "needs route.path_prefix (the prefix it replaces)")
    if policy.direct_response is not None:
        _direct(out, path + ("direct_response",), policy.direct_response)
    if policy.redirect is not None:
        _redirect(out, path + ("redirect",), policy.redirect)
    if policy.direct_response is not None and policy.redirect is not None:
        out.add(path + ("redirect",), "direct_response and redirect cannot both be set")
    if policy.answers_locally:
        answer = "direct_response" if policy.direct_response is not None else "redirect"
        for key in _FORWARDING_KEYS:
            value = getattr(policy, key)
            if value:
                out.add(path + (key,), f"never applies: {answer} answers every request of this pool before it")


def _target(out: Problems, path: KeyPath, target: str, own: str, names: set[str], what: str) -> None:
    if target not in names:
        out.add(path, f"no pool is named {target!r}")
    elif target == own and what == "split":
        out.add(path, "a pool cannot split to itself (the rest of its requests stay there)")


def _mirror(out: Problems, path: KeyPath, mirror: MirrorConfig, own: str, names: set[str]) -> None:
    _target(out, path + ("pool",), mirror.pool, own, names, "mirror")
    _percent(out, path + ("percent",), mirror.percent)
    out.at_least(path + ("max_body_bytes",), mirror.max_body_bytes, 0)
    out.at_least(path + ("max_inflight",), mirror.max_inflight, 1)
    out.positive(path + ("timeout_ms",), mirror.timeout_ms)


def _fault(out: Problems, path: KeyPath, fault: FaultConfig) -> None:
    if fault.delay is None and fault.abort is None and not fault.header_control:
        out.add(path, "needs delay, abort or header_control")
    if fault.delay is not None:
        out.at_least(path + ("delay", "fixed_ms"), fault.delay.fixed_ms, 0)
        _percent(out, path + ("delay", "percent"), fault.delay.percent)
    if fault.abort is not None:
        out.between(path + ("abort", "status"), fault.abort.status, 200, 599)
        _percent(out, path + ("abort", "percent"), fault.abort.percent)
    out.at_least(path + ("max_active",), fault.max_active, 1)


def _header(out: Problems, path: KeyPath, name: str, owned: frozenset[str], why: str) -> str | None:
    """The lower-cased ``name`` when it may be written, else None (the problem added)."""
    error = field_name_error(name.encode("utf-8"))
    if error:
        out.add(path, f"{name!r} is {error}")
        return None
    lower = name.lower()
    if lower in owned:
        out.add(path, f"{lower} cannot be changed here: {why}")
        return None
    return lower


def _value(out: Problems, path: KeyPath, value: str) -> None:
    error = field_value_error(value.encode("utf-8"))
    if error:
        out.add(path, f"a field value that {error}")


def _rewrites(out: Problems, path: KeyPath, rewrite: HeaderRewriteConfig, owned: frozenset[str], why: str) -> None:
    seen: dict[str, str] = {}

    def once(key_path: KeyPath, lower: str, where: str) -> None:
        if lower in seen:
            out.add(key_path, f"{lower} is already in {seen[lower]}")
        seen.setdefault(lower, where)

    for index, name in enumerate(rewrite.remove):
        lower = _header(out, path + ("remove", index), name, owned, why)
        if lower is not None:
            once(path + ("remove", index), lower, "remove")
    for key in ("set", "add"):
        entries: Mapping[str, str] = getattr(rewrite, key)
        for name, value in entries.items():
            lower = _header(out, path + (key, name), name, owned, why)
            _value(out, path + (key, name), value)
            if lower is not None:
                once(path + (key, name), lower, key)


def _direct(out: Problems, path: KeyPath, direct: DirectResponseConfig) -> None:
    out.between(path + ("status",), direct.status, 200, 599)
    if direct.body is not None and len(direct.body.encode("utf-8")) > MAX_DIRECT_BODY:
        out.add(path + ("body",), f"at most {MAX_DIRECT_BODY} bytes")
    seen: set[str] = set()
    for name, value in direct.headers.items():
        lower = _header(out, path + ("headers", name), name, RESPONSE_OWNED, "the proxy frames the answer")
        _value(out, path + ("headers", name), value)
        if lower is not None:
            if lower in seen:
                out.add(path + ("headers", name), f"{lower} is given twice")
            seen.add(lower)


def location_error(template: str) -> str | None:
    """Why ``template`` cannot be a ``redirect.location``, or None: known placeholders only,
    and with them filled in an absolute ``http``/``https`` URL or an absolute path."""
    try:
        parts = split_location(template)
    except ValueError as exc:
        return str(exc)
    sample = {"path": "/p", "query": "q=1", "uri": "/p?q=1", "host": "example.com"}
    text = "".join(sample[t] if placeholder else t for placeholder, t in parts)
    if field_value_error(text.encode("utf-8")) is not None or " " in text:
        return "must be ASCII without spaces or control characters"
    if text.startswith("/"):
        if text.startswith(("//", "/\\")):
            return "a path must not start with '//' (a browser reads it as another host)"
        return None
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        return "must be an absolute http(s) URL or an absolute path starting with '/'"
    return None


def _redirect(out: Problems, path: KeyPath, redirect: RedirectConfig) -> None:
    if redirect.status not in REDIRECT_STATUSES:
        out.add(path + ("status",), f"must be one of {', '.join(map(str, REDIRECT_STATUSES))} (got {redirect.status})")
    error = location_error(redirect.location)
    if error:
        out.add(path + ("location",), error)


def traffic_warnings(config: Config) -> list[ConfigIssue]:
    """What a valid traffic policy says that is probably not meant: a split or mirror to a
    pool without backends (its requests get 503, its copies are dropped), and ``auth`` on a
    pool that answers itself (the answer comes before auth runs: extensions.md section 0)."""
    positions = PositionMap(config.source_positions)
    out: list[ConfigIssue] = []
    for name, pool in config.upstream.items():
        policy = pool.traffic_policy
        if policy is None:
            continue
        path: KeyPath = ("upstream", name, "traffic_policy")
        for index, entry in enumerate(policy.split):
            target = config.upstream.get(entry.pool)
            if target is not None and not target.backends:
                out.append(positions.issue(path + ("split", index, "pool"),
                                           f"pool {entry.pool!r} has no backends: the requests split to it get 503"))
        mirror = policy.mirror
        if mirror is not None and mirror.pool in config.upstream and not config.upstream[mirror.pool].backends:
            out.append(positions.issue(path + ("mirror", "pool"), f"pool {mirror.pool!r} has no backends: every copy is dropped"))
        if policy.answers_locally and pool.auth is not None:
            key = "direct_response" if policy.direct_response is not None else "redirect"
            out.append(positions.issue(path + (key,), f"{key} answers before auth runs: this pool's auth never applies"))
    return out
