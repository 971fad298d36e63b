"""What a plugin's hooks see and return: the request view (:class:`Request`), the response
head view (:class:`ResponseHead`) and a local answer (:class:`Response`).

The views hold copies and the proxy's header lists, nothing else: from a view no path leads
to the proxy's request context, the backend lease, the generation or another pool. What a
hook changes (path, query, headers, a buffered body, the response status) is checked as it is
changed and written back by the proxy after the hook returned.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable, Mapping

import attrs

from spooky_trio.http.messages import ConnectionTls
from spooky_trio.plugin.headers import RESPONSE_MANAGED, Headers

#: what the handshake of the request's connection said: ``server_name`` (SNI) and
#: ``client_cert_subject`` (a verified client certificate's subject, RFC 4514 text)
TlsInfo = ConnectionTls

#: the largest body of a :class:`Response` (a local answer is built in memory)
MAX_LOCAL_BODY = 1024 * 1024

_EMPTY: Mapping[str, object] = types.MappingProxyType({})
#: a path: ``/`` then visible ASCII without ``?`` and ``#``; a query: visible ASCII without ``#``
_PATH = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*")
_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")
_REASON = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
_BODYLESS = (204, 304)


@attrs.frozen(slots=True)
class Route:
    """The route of the pool that took the request (its ``route`` block)."""

    host: str | None = None
    path_prefix: str | None = None
    method: str | None = None


class Request:
    """A request as a plugin's hooks see it (the same object for every hook of one request).

    Read: ``method``, ``authority`` (host[:port], validated), ``target`` (path and query),
    ``path``, ``query``, ``headers``, ``client_address`` ((ip, port)), ``protocol``
    (``HTTP/3``, ``HTTP/2``, ``HTTP/1.1``), ``pool`` (the pool the route chose), ``route``,
    ``tls`` (:data:`TlsInfo`), ``claims`` (the verified JWT's claims, empty without one),
    ``early_data`` (the head came in QUIC 0-RTT: replayable), ``body`` (see below).
    Change: ``path`` and ``query`` (the request is not routed again), ``headers``, the body
    through :meth:`set_body`. ``state`` is a dict for the plugins of this one request (e.g. a
    start time an ``on_response`` hook reads back; key it by your plugin's name).

    ``body`` is the whole request body when some filter of the pool declared
    ``request_body_limit`` (the proxy read it before the first hook), ``b""`` for a request
    without one, and None when the body streams through unread.
    """

    __slots__ = ("_method", "_authority", "_target", "headers", "_client", "_protocol", "_pool", "_route", "_tls", "_claims",
                 "_early", "_body", "_body_changed", "_state")

    def __init__(self, method: bytes, authority: str, target: bytes, headers: Headers, client_address: tuple[str, int],
                 protocol: str, pool: str, route: Route, tls: TlsInfo, claims: Mapping[str, object] | None, early_data: bool,
                 body: bytes | None) -> None:
        self._method = method
        self._authority = authority
        self._target = target
        self.headers = headers
        self._client = client_address
        self._protocol = protocol
        self._pool = pool
        self._route = route
        self._tls = tls
        self._claims = claims
        self._early = early_data
        self._body = body
        self._body_changed = False
        self._state: dict[str, object] | None = None

    @classmethod
    def make(cls, method: str = "GET", target: str = "/", *, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
             authority: str = "example.com", client_address: tuple[str, int] = ("192.0.2.1", 50000), protocol: str = "HTTP/2",
             pool: str = "default", route: Route | None = None, tls: TlsInfo | None = None,
             claims: Mapping[str, object] | None = None, early_data: bool = False, body: bytes | None = b"") -> Request:
        """A free-standing request for a plugin's own unit tests (the proxy makes its own)."""
        request = cls(method.encode("ascii"), authority, b"/", Headers.of(headers), client_address, protocol,
                      pool, route or Route(path_prefix="/"), tls or TlsInfo(), claims, early_data, body)
        path, mark, query = target.partition("?")
        request.path = path
        if mark:
            request.query = query
        return request

    @property
    def method(self) -> str:
        return self._method.decode("latin-1")

    @property
    def authority(self) -> str:
        return self._authority

    @property
    def target(self) -> str:
        """``path`` plus ``?query`` when there is one."""
        return self._target.decode("latin-1")

    @property
    def path(self) -> str:
        return self._target.partition(b"?")[0].decode("latin-1")

    @path.setter
    def path(self, value: str) -> None:
        if not isinstance(value, str) or not _PATH.fullmatch(value):
            raise ValueError(f"{value!r} is not a path: '/' then visible ASCII without '?', '#' or spaces (escape the rest)")
        _, mark, query = self._target.partition(b"?")
        self._target = value.encode("ascii") + mark + query

    @property
    def query(self) -> str:
        """The query without its ``?`` (``""`` when there is none)."""
        return self._target.partition(b"?")[2].decode("latin-1")

    @query.setter
    def query(self, value: str) -> None:
        if not isinstance(value, str) or not _QUERY.fullmatch(value):
            raise ValueError(f"{value!r} is not a query: visible ASCII without '#' or spaces (escape the rest)")
        path = self._target.partition(b"?")[0]
        self._target = path + b"?" + value.encode("ascii") if value else path

    @property
    def client_address(self) -> tuple[str, int]:
        return self._client

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def pool(self) -> str:
        return self._pool

    @property
    def route(self) -> Route:
        return self._route

    @property
    def tls(self) -> TlsInfo:
        return self._tls

    @property
    def claims(self) -> Mapping[str, object]:
        """The claims of the JWT the pool's ``auth`` verified (read-only; empty without one)."""
        return types.MappingProxyType(self._claims) if self._claims else _EMPTY

    @property
    def early_data(self) -> bool:
        return self._early

    @property
    def body(self) -> bytes | None:
        return self._body

    def set_body(self, data: bytes | str) -> None:
        """Replace the request body (a str is sent as UTF-8); the proxy sets its length. Only
        when ``body`` is not None: a streaming body cannot be replaced unread."""
        if self._body is None:
            raise RuntimeError("the body streams through unread: declare request_body_limit on the filter to replace it")
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._body, self._body_changed = raw, True

    @property
    def state(self) -> dict[str, object]:
        if self._state is None:
            self._state = {}
        return self._state

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.authority}{self.path} pool={self._pool!r}>"  # no query: it may hold secrets


class ResponseHead:
    """The head of the answer going to the client (a backend's or a local one), as a response
    hook sees it: ``status`` and ``headers`` may be changed. A status goes between 200 and
    599; a 1xx answer keeps its status, and 204 and 304 (which have no body) can neither be
    set nor changed."""

    __slots__ = ("_status", "_original", "headers")

    def __init__(self, status: int, headers: Headers) -> None:
        self._status = self._original = status
        self.headers = headers

    @classmethod
    def make(cls, status: int = 200, headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> ResponseHead:
        """A free-standing head for a plugin's own unit tests."""
        return cls(status, Headers.of(headers, RESPONSE_MANAGED))

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if value == self._status:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
            raise ValueError(f"a response status goes between 200 and 599 (got {value!r})")
        if self._original < 200 or self._original in _BODYLESS or value in _BODYLESS:
            raise ValueError(f"a {self._original} answer cannot become a {value} one (its body, or lack of one, is already decided)")
        self._status = value

    def __repr__(self) -> str:
        return f"<ResponseHead {self._status} {self.headers!r}>"


class Response:
    """A complete answer a request hook gives instead of the backend (the chain stops there).

    ``body`` is bytes, or a str sent as UTF-8; without a ``content-type`` header a str body
    is ``text/plain; charset=utf-8`` and a bytes one ``application/octet-stream``. ``reason``
    (lowercase letters, digits, ``_.-``; at most 40) joins the access log's reason,
    ``plugin:<name>:<reason>`` (``plugin:<name>`` without one), and the
    ``spooky_requests_by_reason_total`` label: keep it to a few fixed words. The proxy sets
    ``content-length``. Immutable once made."""

    __slots__ = ("status", "body", "headers", "reason")

    status: int
    body: bytes
    #: (name, value) fields, checked, names lowercase
    headers: tuple[tuple[bytes, bytes], ...]
    reason: str | None

    def __init__(self, status: int, body: bytes | str = b"", headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
                 reason: str | None = None) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"a response status goes between 200 and 599 (got {status!r})")
        if reason is not None and (not isinstance(reason, str) or not _REASON.fullmatch(reason)):
            raise ValueError(f"{reason!r} is not a reason: lowercase letters, digits and _.- (at most 40)")
        text = isinstance(body, str)
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if len(raw) > MAX_LOCAL_BODY:
            raise ValueError(f"a local answer's body is at most {MAX_LOCAL_BODY} bytes")
        fields = Headers.of(headers, RESPONSE_MANAGED)
        if raw and b"content-type" not in {n for n, _ in fields._fields}:
            fields.add("content-type", "text/plain; charset=utf-8" if text else "application/octet-stream")
        for name, value in (("status", status), ("body", raw), ("headers", tuple(fields._fields)), ("reason", reason)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Response is immutable")

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
             reason: str | None = None) -> Response:
        """A ``text/plain`` answer (a newline is added when ``text`` has none)."""
        return cls(status, text if text.endswith("\n") or not text else text + "\n", headers, reason=reason)

    @classmethod
    def json(cls, status: int, data: object, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
             reason: str | None = None) -> Response:
        """``data`` as compact JSON (``application/json``)."""
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        return cls(status, body, [("content-type", "application/json"), *_pairs(headers)], reason=reason)

    @classmethod
    def redirect(cls, location: str, status: int = 302, *, reason: str | None = None) -> Response:
        """A redirect to ``location`` (301, 302, 303, 307 or 308), without a body."""
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"a redirect status is 301, 302, 303, 307 or 308 (got {status!r})")
        return cls(status, b"", [("location", location)], reason=reason)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes reason={self.reason!r}>"


def _pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


# -- the proxy's side (not plugin API): what it writes back after a hook --

def request_target(request: Request) -> bytes:
    """The target as the hooks left it."""
    return request._target


def head_status(head: ResponseHead) -> int:
    return head._status


def take_changed_body(request: Request) -> bytes | None:
    """The body :meth:`Request.set_body` gave since the last call, or None."""
    if not request._body_changed:
        return None
    request._body_changed = False
    return request._body
