"""External auth of kind ``http`` (spooky-head.md section 1): the subrequest, and what each
answer means. The call itself goes through :class:`~spooky_trio.auth.outbound.OutboundClient`
from the request's task, within ``timeout_ms``; the proxy filter (``proxy/auth.py``) turns a
:class:`Verdict` into an answer or an admitted request.

Header safety (the forward-auth spoofing hole): before any auth step, the client's copies of
every ``response_header_allowlist`` name (the never-injected names excepted) are removed from
the request (:func:`strip_headers`), so the backend sees such a header only when the auth
service set it, whatever the service answered and on ``fail_open`` too.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

import attrs

from spooky_trio.auth.outbound import OutboundClient, OutboundError, OutboundResponse, OutboundTimeout
from spooky_trio.config.schema_auth import NEVER_INJECTED, SUBREQUEST_EXCLUDED, ExternalAuthConfig
from spooky_trio.http.messages import DownstreamRequest, Headers

#: an auth answer's body is bounded; a bigger one is an *error* (Spooky)
MAX_AUTH_BODY = 64 * 1024

_EXCLUDED = frozenset(name.encode() for name in SUBREQUEST_EXCLUDED)
_NEVER_INJECTED = frozenset(name.encode() for name in NEVER_INJECTED)
#: what the proxy sets on the subrequest (client copies replaced). Spooky also sends
#: x-spooky-backend-address, the backend it picked at route time; spooky-trio picks the
#: backend after admission (extensions.md section 0), so the header is never sent, and a
#: client's copy is removed like the others (docs/auth.md)
_SET_BY_PROXY = (b"x-spooky-original-method", b"x-spooky-original-path", b"x-spooky-original-authority",
                 b"x-spooky-route-upstream", b"x-spooky-backend-address")

ALLOW = "allow"
DENY = "deny"
ERROR = "error"
TIMEOUT = "timeout"


def injectable(names: Iterable[str]) -> frozenset[bytes]:
    """The allowlisted names an answer may set upstream (and whose client copies are
    therefore always removed): lowercased, never-injected names left out."""
    return frozenset(n for n in (name.strip().lower().encode("ascii") for name in names) if n not in _NEVER_INJECTED)


def strip_headers(headers: Headers, names: Collection[bytes]) -> Headers:
    """``headers`` without any header named in ``names``."""
    return [(n, v) for n, v in headers if n not in names]


def subrequest_headers(request: DownstreamRequest, config_headers: Headers, pool: str) -> Headers:
    """The subrequest's headers: the client's (minus the excluded names and what the proxy
    sets), ``request_headers`` replacing same names, then the ``x-spooky-original-*``
    headers and the pool."""
    replaced = {name for name, _ in config_headers}
    out: Headers = [(n, v) for n, v in request.headers
                    if n not in _EXCLUDED and n not in replaced and n not in _SET_BY_PROXY]
    out.extend(config_headers)
    out.append((b"x-spooky-original-method", request.method))
    out.append((b"x-spooky-original-path", request.path))
    authority = request.authority or request.host_header
    if authority:
        out.append((b"x-spooky-original-authority", authority))
    out.append((b"x-spooky-route-upstream", pool.encode("latin-1")))
    return out


@attrs.frozen
class Verdict:
    """What the auth service decided: ``kind`` is :data:`ALLOW` (``inject`` goes upstream),
    :data:`DENY` (``status``, ``headers`` and ``body`` go to the client), :data:`ERROR` or
    :data:`TIMEOUT` (``detail`` says what happened; ``failure_mode`` decides)."""

    kind: str
    status: int = 0
    headers: Headers = attrs.field(factory=list)
    body: bytes = b""
    inject: Headers = attrs.field(factory=list)
    detail: str = ""
    #: the access log's reason of a refusal (empty: the filter names it from the status)
    reason: str = ""
    #: an outbound call was made for it (not: a missing token, a cached answer), its seconds
    #: and its result as ``spooky_auth_outbound_calls_total`` counts it (``2xx``..``5xx``,
    #: ``timeout``, ``connect``, ``tls``, ``too_large``...)
    called: bool = False
    seconds: float = 0.0
    call_result: str = ""


def interpret(response: OutboundResponse, allowlist: frozenset[bytes]) -> Verdict:
    """Spooky's mapping of an auth answer: 2xx admits with each allowlisted header (the last
    of repeats); 3xx with ``Location`` and every 4xx are relayed (``Location`` /
    ``WWW-Authenticate`` plus the allowlisted headers; ``text/plain`` unless the service's
    ``content-type`` is allowlisted); anything else is an error."""
    status = response.status
    picked: dict[bytes, bytes] = {}
    for name, value in response.headers:
        if name in allowlist:
            picked[name] = value  # repeats: the last wins
    allowed = list(picked.items())
    if 200 <= status < 300:
        return Verdict(ALLOW, status, inject=allowed)
    if 300 <= status < 400:
        location = response.header(b"location")
        if location is None:
            return Verdict(ERROR, status, detail=f"answered {status} without Location")
        return Verdict(DENY, status, _relayed(allowed, (b"location", location)), b"")
    if 400 <= status < 500:
        challenge = response.header(b"www-authenticate") if status == 401 else None
        extra = (b"www-authenticate", challenge) if challenge is not None else None
        return Verdict(DENY, status, _relayed(allowed, extra), response.body)
    return Verdict(ERROR, status, detail=f"answered {status}")


def status_class(status: int) -> str:
    """``2xx``..``5xx`` (an answer's result in ``spooky_auth_outbound_calls_total``)."""
    return f"{status // 100}xx"


def _relayed(allowed: Headers, extra: tuple[bytes, bytes] | None) -> Headers:
    headers = list(allowed)
    if not any(name == b"content-type" for name, _ in headers):
        headers.insert(0, (b"content-type", b"text/plain; charset=utf-8"))
    if extra is not None:
        headers.append(extra)
    return headers


class HttpExternalAuth:
    """``external_auth`` of kind ``http`` for one pool, built once per generation."""

    def __init__(self, config: ExternalAuthConfig, client: OutboundClient) -> None:
        assert config.endpoint is not None
        self.endpoint = config.endpoint
        self.timeout = config.timeout_ms / 1000
        self.client = client
        self.fail_open = config.fail_open
        self.allowlist = injectable(config.response_header_allowlist)
        self.config_headers: Headers = [(h.name.strip().lower().encode("ascii"), h.value.encode("utf-8")) for h in config.request_headers]

    async def check(self, request: DownstreamRequest, pool: str) -> Verdict:
        """Ask the service about ``request`` (its headers already stripped of allowlisted
        names), within ``timeout_ms``."""
        headers = subrequest_headers(request, self.config_headers, pool)
        started = time.monotonic()
        try:
            response = await self.client.request("GET", self.endpoint, headers=headers, timeout=self.timeout, max_body=MAX_AUTH_BODY)
        except OutboundError as exc:
            kind = TIMEOUT if isinstance(exc, OutboundTimeout) else ERROR
            return Verdict(kind, detail=f"{exc.reason}: {exc}", called=True, seconds=time.monotonic() - started, call_result=exc.reason)
        return attrs.evolve(interpret(response, self.allowlist), called=True, seconds=response.elapsed, call_result=status_class(response.status))
