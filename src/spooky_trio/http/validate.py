"""The one request-head validator, shared by the HTTP/1.1, HTTP/2 and HTTP/3 ingress.

Every request head is checked here before anything else runs (no filter, no routing), so a
request that an upstream serializer would refuse never gets that far: a refusal is a 400
with a machine-readable reason, answered through the answer door (logged and counted),
and it never reaches a backend (so it can never count against one's health).

Rules (RFC 9110 5.1, 5.5, 5.6.2, 9.1; RFC 9112 3.2; RFC 9113 8.2-8.3; RFC 9114 4.2-4.3):

* method: a token (``G ET`` is refused);
* request target: origin-form (``/`` then visible ASCII, no ``#``), ``*`` for OPTIONS only,
  an authority (no path) for CONNECT; HTTP/2 and HTTP/3 never carry absolute-form in
  ``:path`` (HTTP/1.1's absolute-form is turned into origin-form by its ingress);
* field names: tokens; in HTTP/2 and HTTP/3 lowercase too;
* field values: no control characters but HTAB (NUL, CR, LF, ``\\x01``, ``\\x0b``,
  ``\\x7f``...), no leading or trailing SP/HTAB (HTTP/1.1's parser strips it). Octets over
  0x7f (obs-text) are kept as opaque data, as RFC 9110 5.5 asks of recipients (Go's and
  therefore Caddy's parser do the same);
* HTTP/2 and HTTP/3: no connection-specific fields (``connection``, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``), ``te`` only ``trailers``,
  pseudo-headers first, each at most once, only the request ones, ``:scheme`` the
  transport's (``https``: every listener terminates TLS or QUIC), ``:path`` for every method
  but plain CONNECT, ``:protocol`` only with CONNECT; ``:authority`` when present not empty
  and without userinfo (RFC 9113 8.3.1 lets ``host`` stand in for a missing one: the route
  step takes either, and answers 400 ``missing_authority`` without both); ``host``, on
  every protocol, holds no whitespace and no ``@`` either;
* ``content-length``: digits, and several copies only with the same value.

Performance: one regular expression over all names and one over all values per request
(they are joined first, and the separators counted, so a name holding one is still
refused), not one call per field; tiny_h1's cost is in docs/performance.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.messages import Headers

#: the scheme every listener terminates (TLS on TCP, QUIC): what ``:scheme`` must say
TRANSPORT_SCHEME = b"https"

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
#: field names joined by one space: tokens in any case (HTTP/1.1) / lowercase (HTTP/2, HTTP/3)
_NAMES = re.compile(rb"[" + _TCHAR + rb"]+(?: [" + _TCHAR + rb"]+)*")
_LOWER_TCHAR = rb"!#$%&'*+\-.^_`|~0-9a-z"
_LOWER_NAMES = re.compile(rb"[" + _LOWER_TCHAR + rb"]+(?: [" + _LOWER_TCHAR + rb"]+)*")
#: control characters a field value must not hold (HTAB, 0x09, is allowed inside)
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: origin-form: an absolute path and an optional query of visible ASCII, no fragment
_ORIGIN_FORM = re.compile(rb"/[\x21\x22\x24-\x7e]*")
_DIGITS = re.compile(rb"[0-9]+")

#: connection-specific fields, malformed in HTTP/2 (RFC 9113 8.2.2) and HTTP/3 (RFC 9114 4.2)
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def _bad(reason: str, message: str) -> ErrorResponse:
    return ErrorResponse(400, reason, message)


@attrs.define(slots=True)
class MultiplexedHead:
    """An HTTP/2 or HTTP/3 request head split by :func:`split_pseudo`."""

    method: bytes
    scheme: bytes | None
    authority: bytes | None
    path: bytes | None
    #: ``:protocol`` of an extended CONNECT (RFC 8441, RFC 9220)
    protocol: bytes | None
    headers: Headers


def split_pseudo(fields: Sequence[tuple[bytes, bytes]]) -> MultiplexedHead | ErrorResponse:
    """An HTTP/2 or HTTP/3 field section as a head, or the 400 of its first pseudo-header
    problem (duplicate, unknown, after a regular field, missing, or out of place). Regular
    fields are checked by :func:`check_head`."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    for name, value in fields:
        if name[:1] == b":":
            if headers:
                return _bad("pseudo_header_order", f"pseudo-header {name.decode('latin-1')} after a regular field")
            if name not in _REQUEST_PSEUDO:
                return _bad("bad_pseudo_header", f"{name.decode('latin-1')} is not a request pseudo-header")
            if name in pseudo:
                return _bad("duplicate_pseudo_header", f"{name.decode('latin-1')} appears twice")
            pseudo[name] = value
        else:
            headers.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        return _bad("missing_method", "the request has no :method")
    scheme, path, protocol = pseudo.get(b":scheme"), pseudo.get(b":path"), pseudo.get(b":protocol")
    if method == b"CONNECT" and protocol is None:
        if scheme is not None or path is not None:
            return _bad("bad_connect", "a CONNECT request carries neither :scheme nor :path")
    else:
        if scheme is None or path is None:
            return _bad("missing_scheme_or_path", "the request lacks :scheme or :path")
        if protocol is not None and method != b"CONNECT":
            return _bad("bad_protocol", ":protocol is only valid with CONNECT")
    return MultiplexedHead(method, scheme, pseudo.get(b":authority"), path, protocol, headers)


def check_head(
    method: bytes,
    path: bytes | None,
    headers: Headers,
    *,
    multiplexed: bool,
    scheme: bytes | None = None,
    authority: bytes | None = None,
) -> ErrorResponse | None:
    """The 400 of the first problem of a request head (module docstring), or None.

    ``multiplexed``: the head came over HTTP/2 or HTTP/3 (the stricter field rules apply);
    ``path`` None means a CONNECT without one; ``scheme`` and ``authority`` are the
    pseudo-headers (HTTP/2, HTTP/3), ``authority`` may also be the authority of an
    HTTP/1.1 absolute-form target."""
    if _TOKEN.fullmatch(method) is None:
        return _bad("bad_method", "the method is not a token")
    if path is not None:
        if path == b"*":
            if method != b"OPTIONS":
                return _bad("bad_target", "the asterisk target is only valid with OPTIONS")
        elif _ORIGIN_FORM.fullmatch(path) is None:
            if path[:1] != b"/":
                return _bad("bad_target", "the request target is not an absolute path (origin-form)")
            return _bad("bad_target", "the request target holds a space, a control character, a fragment or a non-ASCII byte")
    if scheme is not None and scheme != TRANSPORT_SCHEME:
        return _bad("scheme_mismatch", f":scheme must be {TRANSPORT_SCHEME.decode()}, the scheme this connection uses")
    if authority is not None and (not authority or _VALUE_CTL.search(authority) or b" " in authority or b"@" in authority):
        return _bad("bad_authority", "the authority is empty or holds a space, '@' or a control character")
    if not headers:
        return None
    names = b" ".join([name for name, _ in headers])
    # a name holding the separator ("x y") would read as two tokens: count the separators
    if (_LOWER_NAMES if multiplexed else _NAMES).fullmatch(names) is None or names.count(b" ") != len(headers) - 1:
        return _bad("bad_field_name", "a field name is not a lowercase token" if multiplexed else "a field name is not a token")
    if _VALUE_CTL.search(b"\t".join([value for _, value in headers])) is not None:
        return _bad("bad_field_value", "a field value holds a control character")
    content_length: bytes | None = None
    for name, value in headers:
        if value and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
            # (h11 strips this whitespace when it parses HTTP/1.1, so there it never occurs)
            return _bad("bad_field_value", "a field value starts or ends with whitespace")
        if multiplexed:
            if name in CONNECTION_SPECIFIC:
                return _bad("connection_specific_field", f"{name.decode('latin-1')} is not allowed in HTTP/2 and HTTP/3")
            if name == b"te" and value.lower() != b"trailers":
                return _bad("bad_te", "te may only be 'trailers' in HTTP/2 and HTTP/3")
        else:
            name = name.lower()  # (HTTP/1.1 names come in any case; h11 lowercases them first)
        if name == b"content-length":
            if _DIGITS.fullmatch(value) is None:
                return _bad("bad_content_length", "content-length is not a number")
            if content_length is not None and int(value) != int(content_length):
                return _bad("conflicting_content_length", "content-length appears with different values")
            content_length = value
        elif name == b"host" and (b" " in value or b"\t" in value or b"@" in value):
            # the request's authority when there is no :authority (HTTP/1.1 always): the
            # :authority rules, but empty is the route step's 400 (missing_authority)
            return _bad("bad_host", "host holds whitespace or '@'")
    return None


def join_cookies(headers: Headers) -> Headers:
    """``headers`` with every ``cookie`` field joined into one, ``; ``-separated, at the
    place of the first (RFC 9113 8.2.3, RFC 9114 4.2.1: HTTP/2 and HTTP/3 split cookies into
    crumbs; an HTTP/1.1 backend must get one ``Cookie`` line)."""
    crumbs = [value for name, value in headers if name == b"cookie"]
    if len(crumbs) < 2:
        return headers
    # an empty crumb would leave "a; " (trailing whitespace, refused by HTTP/1.1 parsers)
    joined: bytes | None = b"; ".join([crumb for crumb in crumbs if crumb])
    out: Headers = []
    for name, value in headers:
        if name != b"cookie":
            out.append((name, value))
        elif joined is not None:
            if joined:
                out.append((b"cookie", joined))
            joined = None
    return out


def field_name_error(name: bytes) -> str | None:
    """Why ``name`` cannot be a field name the proxy sends or matches (a token; pseudo-headers
    are never configurable), or None. The same rule :func:`check_head` applies to requests,
    for names a config writes (extensions.md section 1)."""
    if _TOKEN.fullmatch(name) is None:
        return "not an HTTP field name (a token: letters, digits and !#$%&'*+-.^_`|~)"
    return None


def field_value_error(value: bytes) -> str | None:
    """Why ``value`` cannot be a field value the proxy sends, or None: the rules
    :func:`check_head` applies to a request's values (no control character but HTAB, no
    leading or trailing whitespace), plus ASCII only (a value from config is text)."""
    if not value.isascii():
        return "must be ASCII"
    if _VALUE_CTL.search(value) is not None:
        return "holds a control character (CR, LF, NUL...)"
    if value and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
        return "starts or ends with whitespace"
    return None
