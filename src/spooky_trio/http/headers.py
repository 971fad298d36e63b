"""Header policy: hop-by-hop removal, Host/authority policy and X-Forwarded-* handling.

Pure functions over ``Headers`` lists (lowercase ``bytes`` names), shared by every ingress
protocol so HTTP/3 and the bootstrap listener behave identically.
"""

from __future__ import annotations

from spooky_trio.http.messages import Headers

#: RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones proxies strip.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Headers the proxy itself sets on the upstream request; client copies are replaced.
_PROXY_SET: frozenset[bytes] = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host"})
_PROXY_SET_AND_FORWARDED = _PROXY_SET | {b"forwarded"}


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


def drop_connection_nominated(headers: Headers) -> Headers:
    """A client's request fields named in its ``Connection`` header, removed (RFC 9110
    7.6.1) where the request enters (the HTTP/1.1 ingress: HTTP/2 and HTTP/3 refuse a
    ``connection`` field). Done there, not on the way out, because the chain adds fields of
    its own (claims, trace context, auth headers, rewrites) that a client's
    ``Connection: x-user`` must not be able to strip. The standard hop-by-hop fields stay
    for now (``upgrade`` marks a WebSocket handshake); :func:`strip_hop_by_hop` removes
    them when the request is forwarded."""
    named = _connection_tokens(headers)
    if not named or named <= HOP_BY_HOP:
        return headers
    return [(name, value) for name, value in headers if name not in named or name in HOP_BY_HOP]


def strip_hop_by_hop(headers: Headers) -> Headers:
    """A request's hop-by-hop fields dropped as it is forwarded. The fields its client named
    in ``Connection`` are already gone (:func:`drop_connection_nominated`); what is left
    under such a name was set by the proxy and stays.

    ``te: trailers`` is the one hop-by-hop value HTTP/2 allows end to end; it is kept.
    """
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"te" and value.strip().lower() == b"trailers":
                out.append((name, value))
            continue
        out.append((name, value))
    return out


def strip_response_hop_by_hop(headers: Headers) -> Headers:
    """Like :func:`strip_hop_by_hop` for responses (no ``te`` exception).

    A response framed by ``Transfer-Encoding`` loses its ``Content-Length`` too (RFC 9112
    6.3: Transfer-Encoding wins and a proxy MUST remove Content-Length): the length a backend
    declared next to chunked framing describes nothing we relay, and an HTTP/2 or HTTP/3
    client would hold us to it."""
    named = _connection_tokens(headers)
    chunked = False
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in named:
            chunked = chunked or name == b"transfer-encoding"
            continue
        out.append((name, value))
    if chunked:
        out = [(n, v) for n, v in out if n != b"content-length"]
    return out


def upstream_authority(
    mode: str, *, client_authority: bytes, rewrite_host: str | None, backend_authority: bytes
) -> bytes:
    """The authority sent to the backend for ``host_policy.mode``.

    ``pass-through`` keeps the client's, ``rewrite`` uses the configured host and ``upstream``
    uses the backend's own ``host[:port]``.
    """
    if mode == "rewrite" and rewrite_host:
        return rewrite_host.encode("ascii")
    if mode == "upstream":
        return backend_authority
    return client_authority


def forwarded_for(mode: str, existing: list[bytes], client_ip: str) -> bytes | None:
    """The X-Forwarded-For value for ``forwarded_headers.mode``; None means send none."""
    ip = client_ip.encode("ascii")
    if mode == "preserve":
        return b", ".join(existing) if existing else None
    if mode == "append" and existing:
        return b", ".join([*existing, ip])
    return ip


def build_upstream_headers(
    headers: Headers,
    *,
    forwarded_mode: str,
    client_ip: str,
    scheme: bytes,
    client_authority: bytes,
) -> Headers:
    """Request headers as sent upstream: hop-by-hop removed, X-Forwarded-* applied.

    ``scheme`` is the scheme the proxy terminated (``X-Forwarded-Proto``), never one the
    client sent. ``Host`` is removed here; the upstream client sends the chosen authority
    itself. A client-sent ``Forwarded`` (RFC 7239) is removed unless ``forwarded_mode`` is
    ``preserve``: we report the hop in X-Forwarded-*, and a client's own ``Forwarded:
    proto=http;for=...`` would otherwise contradict it for backends that read it.
    """
    cleaned = strip_hop_by_hop(headers)
    existing_xff = [v for n, v in cleaned if n == b"x-forwarded-for"]
    dropped = _PROXY_SET if forwarded_mode == "preserve" else _PROXY_SET_AND_FORWARDED
    out: Headers = [(n, v) for n, v in cleaned if n not in dropped and n != b"x-forwarded-for"]
    xff = forwarded_for(forwarded_mode, existing_xff, client_ip)
    if xff is not None:
        out.append((b"x-forwarded-for", xff))
    out.append((b"x-forwarded-proto", scheme))
    if client_authority:
        out.append((b"x-forwarded-host", client_authority))
    return out


def host_without_port(authority: bytes) -> bytes:
    """``example.com:443`` -> ``example.com``; ``[::1]:443`` -> ``[::1]``; lowercased."""
    authority = authority.strip().lower()
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[: end + 1] if end != -1 else authority
    head, sep, tail = authority.rpartition(b":")
    if sep and tail.isdigit():
        return head
    return authority
