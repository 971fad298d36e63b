"""WebSocket relays: an HTTP/1.1 ``Upgrade: websocket`` or an HTTP/2 extended CONNECT
(RFC 8441, which the HTTP/2 ingress presents as a GET with ``upgrade: websocket``) relayed
to an HTTP/1.1 backend over a connection of its own (never a pooled one).

The backend side is the upstream HTTP/1.1 client (``upstream/h1.py``): :func:`connect`
dials like the pool does, :meth:`H1Connection.upgrade` sends the handshake and returns the
answer (request head, response parsing, the ``backend_timeout_ms`` head timeout and the
Upstream* errors are the pool's), :meth:`H1Connection.detach` hands over the byte stream
after a 101. This module adds only WebSocket policy: the handshake headers and the
``Sec-WebSocket-Accept`` check. A 101 answer opens the client side
(:meth:`TunnelSink.open_tunnel`: 101 on HTTP/1.1, 200 on HTTP/2) and bytes flow both ways
until both directions ended or nothing moved for :data:`TUNNEL_IDLE_TIMEOUT`. Any other
answer is relayed as an ordinary response. HTTP/3 sinks cannot tunnel: 501.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Protocol, runtime_checkable

import trio

from spooky_trio.config import PerformanceConfig, PoolConfig
from spooky_trio.core.generation import BackendRuntime
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.headers import (
    build_upstream_headers,
    strip_response_hop_by_hop,
    upstream_authority,
)
from spooky_trio.http.messages import (
    DownstreamRequest,
    Headers,
    ResponseSink,
    UpstreamRequest,
)
from spooky_trio.http.validate import TRANSPORT_SCHEME
from spooky_trio.upstream.errors import UpstreamProtocolError
from spooky_trio.upstream.h1 import H1Response, connect

#: a relay with no bytes in either direction for this long is closed (seconds)
TUNNEL_IDLE_TIMEOUT = 300.0
RELAY_CHUNK = 64 * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ClientTunnel(Protocol):
    """The client side of an accepted upgrade, as a byte stream."""

    #: False when the client transport cannot end one direction alone (TLS on TCP):
    #: the relay then closes everything once the backend's direction ended
    supports_half_close: bool

    async def receive_some(self) -> bytes:
        """Next bytes from the client; b"" when it ended its direction or went away."""

    async def send_all(self, data: bytes) -> None:
        """Send bytes to the client (flow-controlled); raises trio.BrokenResourceError."""

    async def send_eof(self) -> None:
        """End our direction towards the client (no-op without half-close)."""


@runtime_checkable
class TunnelSink(Protocol):
    """A response sink that can switch its stream to a tunnel."""

    async def open_tunnel(self, headers: Headers) -> ClientTunnel:
        """Accept the upgrade with the backend's handshake ``headers``."""


def wants_tunnel(request: DownstreamRequest) -> bool:
    """True for a body-less GET asking for ``upgrade: websocket``."""
    return (
        request.method == b"GET"
        and request.body is None
        and any(n == b"upgrade" and b"websocket" in v.lower() for n, v in request.headers)
    )


def websocket_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _WS_GUID).digest())


async def relay_tunnel(
    perf: PerformanceConfig, pool: PoolConfig, backend: BackendRuntime, request: DownstreamRequest, authority: bytes, sink: ResponseSink
) -> None:
    """Relay one WebSocket upgrade to ``backend`` (a ``BackendRuntime``) of ``pool`` (its config).

    Raises :class:`ProxyError` (501 on a sink that cannot tunnel, 502 for an https backend),
    :class:`UpstreamConnectError` (not within ``backend_connect_timeout_ms``),
    :class:`UpstreamTimeout` (no handshake answer within ``backend_timeout_ms``) or
    :class:`UpstreamProtocolError` (bad handshake answer, or the backend broke off a refusal).
    """
    if not isinstance(sink, TunnelSink):
        raise ProxyError(501, "upgrade_not_supported", f"WebSocket is not supported over {request.protocol}; use HTTP/1.1 or HTTP/2")
    # a DNS-refreshed address when the runtime tracks one, else the configured target
    target = backend.connect_target
    if target.scheme != "http":
        raise ProxyError(502, "websocket_backend_unsupported", "WebSocket relays need an http:// (HTTP/1.1) backend")
    headers = build_upstream_headers(
        request.headers,
        forwarded_mode=pool.forwarded_headers.mode,
        client_ip=request.client_address[0],
        scheme=TRANSPORT_SCHEME,  # the scheme we terminated, never the client's :scheme
        client_authority=authority,
    )
    key = next((v for n, v in headers if n == b"sec-websocket-key"), None)
    generated = key is None
    if key is None:  # HTTP/2 clients send none (RFC 8441 5): make one for the backend
        key = base64.b64encode(os.urandom(16))
        headers.append((b"sec-websocket-key", key))
    if not any(n == b"sec-websocket-version" for n, _ in headers):
        headers.append((b"sec-websocket-version", b"13"))
    host = upstream_authority(pool.host_policy.mode, client_authority=authority, rewrite_host=pool.host_policy.host, backend_authority=backend.authority)
    handshake = UpstreamRequest(method=b"GET", target=request.path, authority=host, headers=[*headers, (b"connection", b"upgrade"), (b"upgrade", b"websocket")])
    connection = await connect(target, timeout=perf.backend_connect_timeout_ms / 1000)
    try:
        response = await connection.upgrade(handshake, response_timeout=perf.backend_timeout_ms / 1000)
        if response.status != 101:
            await _relay_refusal(response, sink)
            return
        accept = next((v for n, v in response.headers if n == b"sec-websocket-accept"), b"")
        if generated and accept != websocket_accept(key):
            raise UpstreamProtocolError("the backend's Sec-WebSocket-Accept does not match our key")
        client = await sink.open_tunnel(response.headers)
        upstream, leftover = connection.detach()
        assert isinstance(upstream, trio.abc.HalfCloseableStream)  # http:// is plain TCP
        await relay_bytes(client, upstream, leftover, idle_timeout=TUNNEL_IDLE_TIMEOUT)
    finally:
        await connection.aclose()


async def _relay_refusal(response: H1Response, sink: ResponseSink) -> None:
    """The backend refused the upgrade: its answer goes to the client as a normal response."""
    await sink.send_headers(response.status, strip_response_hop_by_hop(response.headers))
    while chunk := await response.receive():
        await sink.send_data(chunk)
    await sink.send_data(b"", end_stream=True)


async def relay_bytes(client: ClientTunnel, upstream: trio.abc.HalfCloseableStream, leftover: bytes, *, idle_timeout: float) -> None:
    """Copy bytes both ways until both directions ended, either side broke, or nothing
    moved for ``idle_timeout``. An end from the backend ends the client direction too
    (half-close where the client transport has one, else the relay stops)."""
    last_activity = trio.current_time()

    async def backend_to_client(done: trio.Event) -> None:
        nonlocal last_activity
        data: bytes | bytearray = leftover
        while True:
            if data:
                last_activity = trio.current_time()
                await client.send_all(bytes(data))  # (trio streams hand out bytes: no copy)
            try:
                data = await upstream.receive_some(RELAY_CHUNK)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                break
        await client.send_eof()
        done.set()

    async def client_to_backend(done: trio.Event) -> None:
        nonlocal last_activity
        while data := await client.receive_some():
            last_activity = trio.current_time()
            await upstream.send_all(data)
        try:
            await upstream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.set()

    from_backend, from_client = trio.Event(), trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend_to_client, from_backend)
            nursery.start_soon(client_to_backend, from_client)
            while not (from_backend.is_set() and from_client.is_set()):
                if from_backend.is_set() and not client.supports_half_close:
                    break
                with trio.move_on_at(last_activity + idle_timeout):
                    await _first(from_backend, from_client)
                if trio.current_time() >= last_activity + idle_timeout:
                    break
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # one side went away: the relay is over


async def _first(*events: trio.Event) -> None:
    """Return when one of the events that is not set yet becomes set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            if not event.is_set():

                async def wait(event: trio.Event = event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait)
