"""The built-in filters of the request chain and the order they run in.

```
[trace ->] normalize_path -> protocol_policy -> route [-> route_answer] [-> auth] [-> brownout]
  [-> rate_limit] [-> external_auth] [-> plugins] [-> fault] [-> rewrite] [-> split] -> body_limit
  -> admission -> balance [-> mirror] -> forward (terminal)
```

* ``trace`` (only with ``observability.tracing.enabled``): the request's span, the W3C
  trace context continued or started and sent upstream (``proxy/tracing.py``); it decides
  nothing, so it runs first and every refusal after it is traced;
* ``normalize_path``: the request's path as every later step sees it (``http/paths.py``:
  dot segments, merged slashes, unreserved escapes; ``resilience.protocol`` ext keys), with
  the client's own target kept for the access log and, with ``forward_normalized_path:
  false``, for the backend (400 for a malformed escape or a refused escaped slash);
* ``protocol_policy``: ``resilience.protocol`` (allowed methods 405, denied paths 403,
  0-RTT 425, CONNECT permitted or not) via :mod:`spooky_trio.resilience.policy`;
* ``route``: the authority is checked (400) and the routing table picks the pool (404),
  host, path prefix, method and the route's header, query and cookie matchers, with the
  decision log and header of ``observability.routing``;
* ``route_answer`` (``proxy/route_answers.py``, only when a pool has one): a pool's
  traffic_policy ``direct_response`` or ``redirect`` answers before anything else runs;
* ``auth`` (``proxy/auth.py``, only in a generation with an ``auth`` block): api_key then
  jwt with scopes and roles (401), for the pool the route chose;
* ``brownout`` (``proxy/brownout.py``, unless disabled): while brownout is on, a pool that
  is not a core route gets 503 + ``Retry-After``;
* ``rate_limit`` (``proxy/ratelimit.py``, only with ``scoped_rate_limits``): Spooky's
  scoped rate limits, local or through Redis (429 + ``Retry-After``);
* ``external_auth`` (``proxy/external_auth.py``, only with an ``external_auth`` block):
  external auth of kind http or oidc for the pool the route chose;
* ``plugins`` (``proxy/plugins.py``, only when a pool lists ``filters``): the filters of the
  pool the route chose, in its order (an answer, or the request changed; their response
  hooks on every answer after it, last first);
* ``fault``, ``rewrite``, ``split`` (``proxy/faults.py``, ``rewrites.py``, ``split.py``; each
  only when a pool uses it; the traffic policy of the pool the route chose, after the
  plugin request hooks): injected delays and aborts, request header and path rewrites (and
  the response-header hook), the serving pool of a weighted split;
* ``body_limit``: a declared body over ``max_request_body_bytes`` (413);
* ``admission``: adaptive admission, global and pool inflight limits, route queues (503 +
  ``Retry-After``), slots given back when the request ends;
* ``balance``: a backend of the serving pool under its limit whose breaker permits, leased
  for the first attempt (503);
* ``mirror`` (``proxy/mirror.py``, only when a pool has one): a copy of the admitted request
  for the shadow nursery, its body teed as the primary reads it; never waits;
* ``forward`` (``proxy/forward.py``): the exchange, with retries and hedging, or a tunnel.

A CONNECT tunnel (a permitted ``CONNECT`` target) skips ``route``, ``body_limit`` and
``balance``: it is admitted as the pseudo pool ``@connect`` and relayed by ``forward``.
:func:`build_chain` is the one place the order is written down (its docstring says why each
step is where it is); the traffic-policy steps come from ``proxy/traffic.py``; the plugin
request hooks (to come) slot in after ``external_auth``, before ``fault``, in the order of
../shared/spec/extensions.md section 0.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from spooky_trio.config import Config
from spooky_trio.config.address import is_token
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.headers import host_without_port
from spooky_trio.http.paths import PathError, normalize_path
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.brownout import Brownout
from spooky_trio.proxy.chain import Chain, Filter, SyncFilter
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.forward import Forward
from spooky_trio.proxy.plugins import plugin_step
from spooky_trio.proxy.ratelimit import rate_limit_step
from spooky_trio.proxy.tracing import Trace
from spooky_trio.proxy.traffic import traffic_steps
from spooky_trio.resilience.policy import check_request
from spooky_trio.upstream import UpstreamPool

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.observability.tracing import Tracing

route_log = logging.getLogger("spooky.routing")

#: the pseudo pool CONNECT tunnels are admitted as (config pool names cannot start with "@")
CONNECT_POOL = "@connect"


class NormalizePath:
    """Normalize the path before any policy or routing (module docstring, http/paths.py)."""

    name = "normalize_path"

    def __init__(self, config: Config) -> None:
        protocol = config.resilience.protocol
        self.enabled = protocol.normalize_path
        self.merge_slashes = protocol.merge_slashes
        self.escaped_slashes = protocol.escaped_slashes
        self.forward_normalized = protocol.forward_normalized_path

    def on_request(self, ctx: RequestContext) -> Answer | None:
        request = ctx.request
        target = request.path
        if not self.enabled or target[:1] != b"/":  # CONNECT (no path), OPTIONS *
            return None
        path, mark, query = target.partition(b"?")
        try:
            normalized = normalize_path(path, merge_slashes=self.merge_slashes, escaped_slashes=self.escaped_slashes)
        except PathError as exc:
            raise ProxyError(400, exc.reason, str(exc)) from None
        if normalized is not path:
            ctx.client_target = target
            request.path = normalized + mark + query
            if not self.forward_normalized:
                ctx.forward_target = target
        return None


class ProtocolPolicy:
    """``resilience.protocol``: methods, denied paths, 0-RTT and CONNECT (module docstring)."""

    name = "protocol_policy"

    def __init__(self, config: Config, metrics: Metrics | None) -> None:
        self.protocol = config.resilience.protocol
        self.metrics = metrics

    def on_request(self, ctx: RequestContext) -> Answer | None:
        ctx.connect_target = check_request(self.protocol, ctx.request, self.metrics)
        return None


class Route:
    """Validate the authority and pick the pool; log the decision (``observability.routing``)."""

    name = "route"

    def __init__(self, generation: Generation, metrics: Metrics | None = None) -> None:
        config = generation.config
        self.routing = generation.routing
        self.pools = generation.pools
        self.enforce_host_match = config.resilience.protocol.enforce_authority_host_match
        self.decisions = config.observability.routing
        #: the decision header's name, or None: not exposed, or a name that is no HTTP token
        #: (Spooky accepts any non-blank one, and never sends it; config_warnings says so)
        name = self.decisions.header_name.strip().lower()
        self.decision_header = name.encode("ascii") if self.decisions.expose_header and is_token(name) else None
        #: route matchers that turned requests away (``spooky_route_matcher_misses_total``)
        self.misses = metrics.traffic.matcher_misses if metrics is not None and self.routing.has_matchers else None

    def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.connect_target is not None:
            return None
        request = ctx.request
        authority = request.authority or request.host_header or b""
        if not authority:
            raise ProxyError(400, "missing_authority", "the request names no host")
        if (
            self.enforce_host_match
            and request.authority
            and request.host_header is not None
            and host_without_port(request.authority) != host_without_port(request.host_header)
        ):
            raise ProxyError(400, "authority_host_mismatch", ":authority and Host name different hosts")
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        host = host_without_port(authority).decode("latin-1")
        method = request.method.decode("latin-1").upper()
        if self.decisions.enabled:
            entry, reason = self.routing.explain(host, path, method, request, self.misses)
            self._log_decision(ctx, host, path, method, entry.pool if entry else None, reason)
        else:
            entry = self.routing.match(host, path, method, request, self.misses)
        if entry is None:
            raise ProxyError(404, "no_route", "no route matches this request")
        ctx.authority = authority.decode("latin-1")
        ctx.route_pool = ctx.pool = entry.pool
        ctx.serving_pool = self.pools[entry.pool]
        return None

    def _log_decision(self, ctx: RequestContext, host: str, path: str, method: str, pool: str | None, reason: str) -> None:
        """Log one route decision and queue its response header (``observability.routing``)."""
        decisions = self.decisions
        if decisions.include_reason:
            route_log.info("route %s %s%s -> %s (%s)", method, host, path, pool or "none", reason)
        else:
            route_log.info("route %s %s%s -> %s", method, host, path, pool or "none")
        if self.decision_header is not None:
            value = f"pool={pool or '-'}"
            if decisions.include_reason:
                quoted = reason.replace("\\", "\\\\").replace('"', '\\"')
                value += f"; reason=\"{quoted}\""
            ctx.response_headers.append((self.decision_header, value.encode("latin-1", "replace")))


class BodyLimit:
    """A declared request body over ``performance.max_request_body_bytes`` answers 413 before
    any slot is taken (a body without a declared length is limited as it streams)."""

    name = "body_limit"

    def __init__(self, config: Config) -> None:
        self.limit = config.performance.max_request_body_bytes

    def on_request(self, ctx: RequestContext) -> Answer | None:
        length = ctx.request.content_length
        if length is not None and length > self.limit and ctx.connect_target is None:
            raise ProxyError(413, "request_body_too_large", f"request body exceeds {self.limit} bytes")
        return None


class Admission:
    """Overload admission for the serving pool (a CONNECT tunnel: the ``@connect`` pool); the
    slots are given back when the request ends."""

    name = "admission"

    def __init__(self, guard: OverloadGuard) -> None:
        self.guard = guard

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.serving_pool
        name = pool.name if pool is not None and ctx.connect_target is None else CONNECT_POOL
        config = ctx.config
        assert config is not None
        slots = await self.guard.admit(config, name)
        ctx.on_finish(functools.partial(self.guard.release, config, slots))
        return None


class Balance:
    """Lease a backend of the serving pool for the first attempt (``proxy/lease.py``)."""

    name = "balance"

    def __init__(self, guard: OverloadGuard) -> None:
        self.guard = guard

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.serving_pool
        if pool is None or ctx.connect_target is not None:
            return None
        assert ctx.config is not None
        lease = ctx.lease = await self.guard.choose(ctx.config, pool, ctx.request)
        ctx.on_finish(lease.release)
        ctx.backend = lease.backend.id
        return None


def build_chain(generation: Generation, *, upstream: UpstreamPool, state: StateStore, metrics: Metrics | None,
                tracing: Tracing | None = None) -> Chain:
    """The chain of ``generation`` in the order of the module docstring. ``state`` is the
    server's store (overload state survives reloads there); ``tracing`` the server's
    (None: no span, whatever the config says).

    Spooky's own steps keep Spooky's order (spooky-head.md section 2, "Order"), so a request
    several steps would refuse gets Spooky's status: route (404), ``auth`` (api_key, jwt:
    401), ``brownout`` (503), ``rate_limit`` (429), ``external_auth``, then the overload
    steps (extensions.md section 0). ``trace`` decides nothing and runs first, so every
    refusal is traced; ``normalize_path`` runs before every step that reads the path.

    ``body_limit`` (a declared ``Content-Length`` over ``max_request_body_bytes``: 413) is
    not in Spooky's list: Spooky enforces the limit on the body itself, which it reads only
    once it dispatches the request, after every check above. So a 413 must not pre-empt
    any of them: an unauthenticated, browned-out or rate-limited request with a large body
    gets 401, 503 or 429 as on Spooky, and a request refused by auth never learns the body
    limit. It runs just before ``admission``, not after it, on purpose: an oversize request
    can never be served, so it must not take or queue for an inflight slot (the one case
    that differs from Spooky is a request that overload would also shed: 413 here, 503
    there). A body without a declared length is limited as it streams (``forward``).

    ``plugins`` (the pool's ``filters``) runs right after ``external_auth``, where
    extensions.md section 0 puts the plugin request hooks: plugins see only requests auth and
    rate limits let through, and a filter's answer pre-empts ``body_limit`` like every
    policy step before it (a filter that reads the body bounds it itself:
    ``request_body_limit``, never more than ``max_request_body_bytes``).

    The traffic policy (``proxy/traffic.py``) sits where section 0 puts it: ``route_answer``
    right after the route (a maintenance page or a redirect needs no credentials and no
    slot); ``fault``, ``rewrite`` and ``split`` after the plugin request hooks, so
    auth and rate limits judge the request as the client sent it and the split's serving
    pool is known before admission takes its slots; ``mirror`` last, so only a request that
    will be forwarded is copied, with the headers its backend gets.
    """
    config = generation.config
    guard = OverloadGuard(state.resilience, metrics)
    filters: list[Filter | SyncFilter] = [NormalizePath(config), ProtocolPolicy(config, metrics), Route(generation, metrics)]
    if tracing is not None and config.observability.tracing.enabled:
        filters.insert(0, Trace(tracing.tracer(config.observability.tracing)))
    traffic = traffic_steps(generation, upstream=upstream, shadows=state.shadows, metrics=metrics)
    filters += traffic.after_route  # direct_response | redirect
    # auth is imported only for a config with auth: PyJWT and httpx stay out of processes
    # that never use them
    local_auth: Filter | SyncFilter | None = None
    external_auth: Filter | SyncFilter | None = None
    if any(pool.auth is not None for pool in config.upstream.values()):
        from spooky_trio.proxy.auth import local_auth_filter
        from spooky_trio.proxy.external_auth import external_auth_filter

        local_auth = local_auth_filter(generation, state.auth, metrics)
        external_auth = external_auth_filter(generation, state.auth, metrics)
    if local_auth is not None:
        filters.append(local_auth)
    if config.resilience.brownout.enabled:
        filters.append(Brownout(config, guard, CONNECT_POOL))
    rate_limit = rate_limit_step(config, state.rate_limits, metrics)
    if rate_limit is not None:
        filters.append(rate_limit)
    if external_auth is not None:
        filters.append(external_auth)
    # the plugin request hooks: right after external auth (extensions.md section 0); the
    # traffic-policy steps (faults, rewrites, split) come after them
    plugins = plugin_step(generation, metrics)
    if plugins is not None:
        filters.append(plugins)
    filters += traffic.before_admission  # fault, rewrite, split (after the plugin request hooks)
    filters += [BodyLimit(config), Admission(guard), Balance(guard)]
    filters += traffic.before_forward  # mirror
    return Chain(generation, filters, Forward(config, upstream, guard, metrics))
