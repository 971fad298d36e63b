"""The ``route_answer`` step: traffic_policy ``direct_response`` and ``redirect``, right after
the route (extensions.md section 0): the proxy answers every request of such a pool itself,
before auth, limits or any backend (the access log's ``reason`` is ``direct_response`` or
``redirect``; neither counts as a refusal).

A direct response is built once per generation (status, body, headers, the pool's
``response_headers`` applied; ``content-type: text/plain; charset=utf-8`` when it has a body
and no ``content-type`` of its own). A redirect fills its ``location`` template per request
(extensions.md section 7): ``{path}`` the path without the query, ``{query}`` the query
without ``?`` (empty when none), ``{uri}`` the path plus ``?query`` when there is one,
``{host}`` the request's host without port. Paths are the normalized ones the route saw.
Two guards keep a substituted path from naming another site: a ``\\`` in it is sent as
``%5C``, and a location that would start with ``//`` (a path beginning with ``//`` put
first) keeps one leading slash (browsers read ``//x`` and ``/\\x`` as the host ``x``).
"""

from __future__ import annotations

from spooky_trio.config import Config
from spooky_trio.config.schema_traffic import DirectResponseConfig, RedirectConfig, split_location
from spooky_trio.http.headers import host_without_port
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.rewrites import HeaderRewrite

_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


def direct_answer(config: DirectResponseConfig, response_headers: HeaderRewrite | None) -> Answer:
    """The answer of a ``direct_response`` (module docstring)."""
    body = (config.body or "").encode("utf-8")
    headers = [(name.lower().encode("ascii"), value.encode("ascii")) for name, value in config.headers.items()]
    if body and not any(name == b"content-type" for name, _ in headers):
        headers.insert(0, _TEXT_PLAIN)
    if response_headers is not None:
        headers = response_headers.apply(headers)
    return Answer(config.status, "direct_response", body, tuple(headers), rejection=False)


class Redirect:
    """A compiled ``redirect`` (module docstring)."""

    __slots__ = ("status", "parts", "headers")

    def __init__(self, config: RedirectConfig, response_headers: HeaderRewrite | None) -> None:
        self.status = config.status
        self.parts = split_location(config.location)
        self.headers = response_headers

    def location(self, path: bytes, authority: str) -> bytes:
        """The ``Location`` for a request to ``path`` (target with query) at ``authority``."""
        bare, mark, query = path.partition(b"?")
        safe = bare.replace(b"\\", b"%5C")
        values = {
            "path": safe,
            "query": query,
            "uri": safe + mark + query if query else safe,
            "host": host_without_port(authority.encode("latin-1")),
        }
        text = b"".join(values[part] if placeholder else part.encode("ascii") for placeholder, part in self.parts)
        if text.startswith(b"//"):
            text = b"/" + text.lstrip(b"/")
        return text

    def answer(self, ctx: RequestContext) -> Answer:
        headers = [(b"location", self.location(ctx.request.path, ctx.authority))]
        if self.headers is not None:
            headers = self.headers.apply(headers)
        return Answer(self.status, "redirect", b"", tuple(headers), rejection=False)


class RouteAnswer:
    """The route_answer step (module docstring); in the chain only when a pool has a
    ``direct_response`` or a ``redirect``."""

    name = "route_answer"

    def __init__(self, config: Config) -> None:
        self.direct: dict[str, Answer] = {}
        self.redirects: dict[str, Redirect] = {}
        for name, pool in config.upstream.items():
            policy = pool.traffic_policy
            if policy is None:
                continue
            response = HeaderRewrite(policy.response_headers) if policy.response_headers is not None else None
            if policy.direct_response is not None:
                self.direct[name] = direct_answer(policy.direct_response, response)
            elif policy.redirect is not None:
                self.redirects[name] = Redirect(policy.redirect, response)

    def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        answer = self.direct.get(pool)
        if answer is not None:
            return answer
        redirect = self.redirects.get(pool)
        return redirect.answer(ctx) if redirect is not None else None


def answers_locally(config: Config) -> bool:
    """Some pool of ``config`` answers itself (the step is in the chain only then)."""
    return any(pool.traffic_policy is not None and pool.traffic_policy.answers_locally for pool in config.upstream.values())
