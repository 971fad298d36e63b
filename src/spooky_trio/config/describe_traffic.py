"""Each pool's route matchers and traffic policy in words, for ``spooky-trio check`` and
``/admin/runtime`` (``traffic_policy``): what an operator reads to know what a config does.

Request header values set or added by ``request_headers`` are never shown (they are where
credentials for a backend go); neither are the values of matchers on ``authorization``,
``proxy-authorization`` and ``x-api-key``. Everything else is shown as written.
"""

from __future__ import annotations

from spooky_trio.config.schema import Config, PoolConfig, RouteConfig
from spooky_trio.config.schema_traffic import FaultConfig, HeaderRewriteConfig, MatcherConfig, MirrorConfig, TrafficPolicyConfig

#: header matchers whose values are not shown
_HIDDEN = frozenset({"authorization", "proxy-authorization", "x-api-key"})


def describe_traffic(config: Config) -> dict[str, list[str]]:
    """Pool name -> sentences, for the pools that have matchers, a traffic policy or no
    route (the others route and forward as Spooky does: nothing to explain)."""
    reached: dict[str, list[str]] = {}
    for name, pool in config.upstream.items():
        if pool.traffic_policy is not None:
            for target in pool.traffic_policy.targets():
                reached.setdefault(target, []).append(name)
    out: dict[str, list[str]] = {}
    for name, pool in config.upstream.items():
        lines = _pool(pool, reached.get(name, []))
        if lines:
            out[name] = lines
    return out


def _pool(pool: PoolConfig, reached_from: list[str]) -> list[str]:
    lines: list[str] = []
    route = pool.route
    if route is None:
        lines.append(f"no route: reached only through {_names(reached_from)}")
    elif route.headers or route.query or route.cookies:
        lines.append("route: " + _route(route))
    policy = pool.traffic_policy
    if policy is not None:
        lines += _policy(policy)
    return lines


def _names(names: list[str]) -> str:
    return ", ".join(f"pool {name}'s split or mirror" for name in dict.fromkeys(names)) or "nothing"


def _route(route: RouteConfig) -> str:
    parts = []
    if route.host is not None:
        parts.append(f"host {route.host}")
    if route.path_prefix is not None:
        parts.append(f"path starting with {route.path_prefix}")
    if route.method is not None:
        parts.append(f"method {route.method}")
    for source, matchers in (("header", route.headers), ("query parameter", route.query), ("cookie", route.cookies)):
        parts += [matcher_words(source, m) for m in matchers]
    return " and ".join(parts)


def matcher_words(source: str, matcher: MatcherConfig) -> str:
    """``header x-canary is "1"``, ``cookie beta does not start with "on"``..."""
    kinds = matcher.kinds()
    kind = kinds[0] if kinds else "present"
    hidden = source == "header" and matcher.name.lower() in _HIDDEN
    invert = matcher.invert
    if kind == "present":
        present = (matcher.present is not False) != invert
        return f"{source} {matcher.name} is {'present' if present else 'absent'}"
    value = "(value not shown)" if hidden else '"' + str(getattr(matcher, kind)) + '"'
    verbs = {"exact": ("is", "is not"), "prefix": ("starts with", "does not start with"),
             "suffix": ("ends with", "does not end with"), "regex": ("matches", "does not match")}[kind]
    return f"{source} {matcher.name} {verbs[1] if invert else verbs[0]} {value}"


def _percent(value: float) -> str:
    return f"{value:g}%"


def _policy(policy: TrafficPolicyConfig) -> list[str]:
    lines: list[str] = []
    if policy.direct_response is not None:
        direct = policy.direct_response
        body = len((direct.body or "").encode("utf-8"))
        lines.append(f"direct response: every request is answered {direct.status} by the proxy ({body}-byte body)")
    if policy.redirect is not None:
        lines.append(f"redirect: every request is answered {policy.redirect.status} to {policy.redirect.location}")
    if policy.split:
        shares = ", ".join(f"{_percent(e.percent)} to pool {e.pool}" for e in policy.split)
        rest = 100 - sum(round(e.percent * 100) for e in policy.split) / 100
        how = (f"by the hash of {policy.split_key} (the same key always goes the same way; requests without it are split at random)"
               if policy.split_key else "at random")
        lines.append(f"split: {shares}, {_percent(rest)} stay here; chosen {how}; the target pool's backends, limits and "
                     "balancing serve, this pool's policy applies")
    if policy.mirror is not None:
        lines.append(_mirror(policy.mirror))
    if policy.fault is not None:
        lines.append(_fault(policy.fault))
    if policy.request_headers is not None:
        lines.append("request headers: " + _rewrite(policy.request_headers, show_values=False))
    if policy.response_headers is not None:
        lines.append("response headers: " + _rewrite(policy.response_headers, show_values=True))
    if policy.rewrite is not None:
        lines.append(f"rewrite: the route's path prefix becomes {policy.rewrite.path_prefix} at the backend")
    return lines


def _mirror(mirror: MirrorConfig) -> str:
    return (f"mirror: a copy of {_percent(mirror.percent)} of the requests goes to pool {mirror.pool} (host + '-shadow'; "
            f"bodies up to {mirror.max_body_bytes} bytes, at most {mirror.max_inflight} copies at once, {mirror.timeout_ms} ms "
            "each); its answer is discarded and it never delays the request")


def _fault(fault: FaultConfig) -> str:
    parts = []
    if fault.delay is not None:
        parts.append(f"{_percent(fault.delay.percent)} of the requests wait {fault.delay.fixed_ms} ms")
    if fault.abort is not None:
        parts.append(f"{_percent(fault.abort.percent)} are answered {fault.abort.status} by the proxy")
    control = ("on: clients may force faults with x-spooky-fault-delay-ms and x-spooky-fault-abort"
               if fault.header_control else "off")
    parts.append(f"at most {fault.max_active} requests in a fault at once; header control {control}")
    return "fault injection (testing): " + "; ".join(parts)


def _rewrite(rewrite: HeaderRewriteConfig, *, show_values: bool) -> str:
    parts = []
    if rewrite.remove:
        parts.append("remove " + ", ".join(rewrite.remove))
    for verb, entries in (("set", rewrite.set), ("add", rewrite.add)):
        if entries:
            shown = [f"{n}: {v}" if show_values else f"{n} (value not shown)" for n, v in entries.items()]
            parts.append(f"{verb} " + ", ".join(shown))
    return "; ".join(parts) or "nothing"
