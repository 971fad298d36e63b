"""The ``rewrite`` step: traffic_policy ``request_headers``, ``rewrite.path_prefix`` and
``response_headers`` of the pool the route chose (extensions.md section 1).

It runs after the plugin request hooks and fault injection, before the split (section 0),
so the serving pool's backends (and a mirror copy) get the rewritten request. A header
rewrite applies ``remove``, then ``set`` (every copy the client sent is replaced: a client
can never smuggle its own value past a ``set``), then ``add`` (appended beside the client's).
Names and values were validated at load (``config/validate_traffic.py``: tokens, no
CR/LF/NUL, never a hop-by-hop or framing field), so nothing here can break a head.

``rewrite.path_prefix`` replaces the route's ``path_prefix`` at the start of the target the
backend gets (``ctx.forward_target``); the log keeps the client's path. Like Envoy's
``prefix_rewrite``, slashes are not adjusted: ``/v1`` -> ``/internal/v1`` turns ``/v1/users``
into ``/internal/v1/users``.

``response_headers`` apply to every answer given after this step ran (a backend's, and the
proxy's own later refusals: 503 shed, 502...), through the response hook; a pool's
``direct_response`` and ``redirect`` include them (``proxy/route_answers.py``).
"""

from __future__ import annotations

from spooky_trio.config import Config
from spooky_trio.config.schema_traffic import HeaderRewriteConfig
from spooky_trio.http.messages import Headers
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext, ResponseHead


class HeaderRewrite:
    """One compiled ``request_headers`` / ``response_headers`` block (module docstring)."""

    __slots__ = ("remove", "set", "add", "_dropped")

    def __init__(self, config: HeaderRewriteConfig) -> None:
        self.remove = frozenset(name.lower().encode("ascii") for name in config.remove)
        self.set = tuple((name.lower().encode("ascii"), value.encode("ascii")) for name, value in config.set.items())
        self.add = tuple((name.lower().encode("ascii"), value.encode("ascii")) for name, value in config.add.items())
        #: names whose client (or backend) copies go: removed and set ones
        self._dropped = self.remove | {name for name, _ in self.set}

    def apply(self, headers: Headers) -> Headers:
        """``headers`` rewritten (a new list; ``headers`` is not changed)."""
        dropped = self._dropped
        out = [(n, v) for n, v in headers if n not in dropped] if dropped else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out


class ResponseRewrite:
    """The response hook of a pool's ``response_headers`` (built once per generation)."""

    name = "rewrite"
    __slots__ = ("rewrite",)

    def __init__(self, rewrite: HeaderRewrite) -> None:
        self.rewrite = rewrite

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        return None

    async def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        head.headers = self.rewrite.apply(head.headers)


class PoolRewrite:
    """A pool's rewrites, compiled."""

    __slots__ = ("request", "response", "prefix", "replacement")

    def __init__(self, request: HeaderRewrite | None, response: HeaderRewrite | None, prefix: bytes | None,
                 replacement: bytes | None) -> None:
        self.request = request
        self.response = ResponseRewrite(response) if response is not None else None
        self.prefix = prefix
        self.replacement = replacement


def rewrite_path(target: bytes, normalized: bytes, prefix: bytes, replacement: bytes) -> bytes:
    """``target`` (what the backend would get) with ``prefix`` replaced by ``replacement``;
    when ``target`` does not start with it (the client's own target, kept with
    ``forward_normalized_path: false``, may differ), the ``normalized`` path is rewritten."""
    if target.startswith(prefix):
        return replacement + target[len(prefix):]
    return replacement + normalized[len(prefix):]


class Rewrite:
    """The rewrite step (module docstring); in the chain only when a pool has rewrites."""

    name = "rewrite"

    def __init__(self, config: Config) -> None:
        self.pools: dict[str, PoolRewrite] = {}
        for name, pool in config.upstream.items():
            policy = pool.traffic_policy
            if policy is None or policy.answers_locally:
                continue
            request = HeaderRewrite(policy.request_headers) if policy.request_headers is not None else None
            response = HeaderRewrite(policy.response_headers) if policy.response_headers is not None else None
            prefix = replacement = None
            if policy.rewrite is not None and pool.route is not None and pool.route.path_prefix is not None:
                prefix = pool.route.path_prefix.encode("ascii")
                replacement = policy.rewrite.path_prefix.encode("ascii")
            if request is not None or response is not None or prefix is not None:
                self.pools[name] = PoolRewrite(request, response, prefix, replacement)

    def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.route_pool is None:
            return None
        rewrite = self.pools.get(ctx.route_pool)
        if rewrite is None:
            return None
        request = ctx.request
        if rewrite.request is not None:
            request.headers = rewrite.request.apply(request.headers)
        if rewrite.prefix is not None:
            assert rewrite.replacement is not None
            normalized = request.path
            ctx.forward_target = rewrite_path(ctx.forward_target or normalized, normalized, rewrite.prefix, rewrite.replacement)
        if rewrite.response is not None:
            ctx.add_response_filter(rewrite.response)
        return None


def has_rewrites(config: Config) -> bool:
    """Some pool of ``config`` rewrites (the step is in the chain only then)."""
    return bool(Rewrite(config).pools)
