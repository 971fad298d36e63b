"""The TCP bootstrap listener: TLS with ALPN ``h2``/``http/1.1`` beside each QUIC listener.

```
BootstrapListener.serve (nursery owned by the listener)
├─ accept loop                 stops at drain
└─ connection task per client  plain HTTP: 400 with a hint (plaintext.py); else TLS
     │                         handshake (SNI identity, client certificate) -> ALPN
     ├─ H1ServerConnection.run     requests one after another
     └─ H2ServerConnection.run     one task per stream in the connection's nursery
```

Every request goes to the same filter chain as HTTP/3 (``Proxy.handle``) inside
:meth:`ServeContext.serve_request`, which counts it in the shared :class:`Activity` so drain
waits for it; a request refused before the chain (431, 400, 408, 501) is answered through
the same answer door (``Proxy.reject``), so it is access-logged and counted alike. Every
response, error responses included, carries ``Alt-Svc`` naming the QUIC port. Drain: the accept loop stops, HTTP/2 connections get GOAWAY, HTTP/1.1 connections
answer their current request with ``connection: close`` and idle ones close at once.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable

import attrs
import trio

from spooky_trio.config import ClientAuthConfig, PerformanceConfig, ProtocolConfig
from spooky_trio.core.activity import Activity
from spooky_trio.http.errors import ErrorResponse, header_limit_error
from spooky_trio.http.messages import ConnectionTls, DownstreamRequest, Headers, ResponseSink
from spooky_trio.ingress.h1 import H1ServerConnection
from spooky_trio.ingress.h2 import H2ServerConnection
from spooky_trio.ingress.identities import IdentityStore
from spooky_trio.ingress.plaintext import answer_plain_http, starts_with_plain_http
from spooky_trio.ingress.tls import (
    BootstrapTls,
    classify_handshake_failure,
    handshake_server_name,
    peer_subject,
)

log = logging.getLogger("spooky.ingress.bootstrap")

Handler = Callable[[DownstreamRequest, ResponseSink], Awaitable[None]]
#: answers a request refused before the chain, through the answer door (``Proxy.reject``)
Rejecter = Callable[[DownstreamRequest, ResponseSink, ErrorResponse], Awaitable[None]]

#: pending connections the kernel queues before accept
LISTEN_BACKLOG = 1024


@attrs.define
class BootstrapLimits:
    """Per-connection limits (seconds, counts, bytes); read when a connection starts."""

    max_headers_count: int = 128
    max_headers_bytes: int = 16384
    #: TLS handshake must finish within this
    handshake_timeout: float = 10.0
    #: a request head must be complete within this of its first byte (of the connection
    #: for the first request); slower clients get 408 (slowloris)
    header_timeout: float = 10.0
    #: an idle keep-alive HTTP/1.1 connection, or an HTTP/2 connection without streams, closes after this
    keepalive_timeout: float = 75.0
    #: HTTP/1.1 requests per connection; the last one is answered with ``connection: close``
    max_requests_per_connection: int = 1000
    #: first request body bytes must arrive within this (``client_body_idle_timeout_ms``)
    body_idle_timeout: float = 10.0
    #: HTTP/2 SETTINGS: concurrent streams, per-stream and connection receive windows
    h2_max_concurrent_streams: int = 100
    h2_stream_window: int = 1_000_000
    h2_connection_window: int = 10_000_000
    #: HTTP/2 rapid reset (CVE-2023-44487): client resets of unfinished streams, net of
    #: responses finished normally, tolerated before GOAWAY(ENHANCE_YOUR_CALM); the listener
    #: sets it to twice ``h2_max_concurrent_streams``
    h2_max_reset_debt: int = 200


class ServeContext:
    """What every connection of one listener shares: pipeline, limits, Alt-Svc and counters."""

    def __init__(self, handler: Handler, activity: Activity, limits: BootstrapLimits, stats: Counter[str], reject: Rejecter | None = None) -> None:
        self.handler = handler
        self.activity = activity
        self.limits = limits
        self.stats = stats
        self.alt_svc = b""
        self._reject = reject

    def response_headers(self, headers: Headers) -> Headers:
        """``headers`` plus our ``alt-svc`` (replacing a backend's, which names another port)."""
        out = [(n, v) for n, v in headers if n != b"alt-svc"]
        if self.alt_svc:
            out.append((b"alt-svc", self.alt_svc))
        return out

    def head_limit_error(self, headers: Headers) -> ErrorResponse | None:
        """431 when the request's fields pass ``max_headers_count`` or ``max_headers_bytes``
        (sum of names and values), else None."""
        return header_limit_error(headers, max_count=self.limits.max_headers_count, max_bytes=self.limits.max_headers_bytes)

    async def serve_request(self, request: DownstreamRequest, sink: ResponseSink) -> None:
        """Run the pipeline for one request, counted as in flight; never raises for it."""
        self.activity.enter()
        try:
            await self.handler(request, sink)
        except Exception:
            self.stats["panics"] += 1
            log.exception("unexpected error serving %s %s from %s", request.method.decode(), request.path.decode("latin-1"), request.client_address)
            sink.reset("internal_error")
        finally:
            self.activity.exit()

    async def reject(self, request: DownstreamRequest, sink: ResponseSink, error: ErrorResponse) -> None:
        """Answer a request refused before the chain through the answer door, counted as
        in flight like a served one (a drain waits for its record)."""
        assert self._reject is not None, "a serving listener is built with its Rejecter"
        self.activity.enter()
        try:
            await self._reject(request, sink, error)
        finally:
            self.activity.exit()


class BootstrapListener:
    """One TCP socket serving HTTP/1.1 and HTTP/2 over TLS for a listener block.

    Build it (raises :class:`~spooky_trio.ingress.tls.TlsSetupError`), :meth:`bind` to the
    QUIC listener's port, then run :meth:`serve` with ``nursery.start``. ``stats`` counts
    connections, rejections and the TLS outcomes (``tls.stats``).
    """

    def __init__(
        self,
        *,
        address: str,
        identities: IdentityStore,
        client_auth: ClientAuthConfig,
        performance: PerformanceConfig,
        protocol: ProtocolConfig,
        handler: Handler,
        reject: Rejecter,
        activity: Activity,
    ) -> None:
        self.address = address
        self.port = 0
        self.performance = performance
        self.tls = BootstrapTls(identities, client_auth)
        self.limits = BootstrapLimits(
            max_headers_count=protocol.max_headers_count,
            max_headers_bytes=protocol.max_headers_bytes,
            body_idle_timeout=performance.client_body_idle_timeout_ms / 1000,
            h2_max_concurrent_streams=performance.quic_initial_max_streams_bidi,
            h2_stream_window=min(performance.quic_initial_max_stream_data, 2**31 - 1),
            h2_connection_window=min(performance.quic_initial_max_data, 2**31 - 1),
            h2_max_reset_debt=2 * performance.quic_initial_max_streams_bidi,
        )
        self.stats: Counter[str] = Counter()
        self.ctx = ServeContext(handler, activity, self.limits, self.stats, reject)
        self.connections: set[H1ServerConnection | H2ServerConnection] = set()
        #: accepted TCP connections, handshaking ones included (``max_active_connections``)
        self.open_connections = 0
        self.draining = False
        self._sock: trio.socket.SocketType | None = None
        self._accept_scope = trio.CancelScope()

    def bind(self, port: int, *, alt_svc_port: int | None = None) -> None:
        """Bind and listen on ``port`` (normally the QUIC listener's). Raises OSError."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.performance.reuseport and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.address, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = trio.socket.from_stdlib_socket(sock)
        self.port = sock.getsockname()[1]
        self.ctx.alt_svc = f'h3=":{alt_svc_port or self.port}"; ma=86400'.encode("ascii")

    def unbind(self) -> None:
        """Close a socket bound but never served (a reload that did not commit)."""
        if self._sock is not None:
            self._sock.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve connections until cancelled. Call :meth:`bind` first."""
        assert self._sock is not None, "bind() first"
        listener = trio.SocketListener(self._sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                with self._accept_scope:
                    while True:
                        try:
                            stream = await listener.accept()
                        except OSError as exc:  # EMFILE and friends: pause, keep serving
                            log.warning("accept failed on %s:%d: %s", self.address, self.port, exc)
                            await trio.sleep(0.1)
                            continue
                        if self.open_connections >= self.performance.max_active_connections:
                            self.stats["cap_rejects"] += 1
                            await trio.aclose_forcefully(stream)
                            continue
                        nursery.start_soon(self._serve_connection, stream)
                # drain: refuse new connections now; open ones finish in the nursery
                await trio.aclose_forcefully(listener)
        finally:
            await trio.aclose_forcefully(listener)

    async def _serve_connection(self, tcp: trio.SocketStream) -> None:
        self.open_connections += 1
        try:
            await self._serve_tls(tcp)
        finally:
            self.open_connections -= 1

    async def _serve_tls(self, tcp: trio.SocketStream) -> None:
        try:
            peer = tcp.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        client_address = (str(peer[0]), int(peer[1]))
        self.stats["connections"] += 1
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # not https_compatible: our closes carry close_notify (clients that read until close need it)
        stream = trio.SSLStream(tcp, self.tls.context, server_side=True)
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                plain = await starts_with_plain_http(tcp)  # ingress/plaintext.py: 400 with a hint
                if not plain:
                    await stream.do_handshake()
        except trio.TooSlowError:
            self.tls.record_failure("timeout", client_address)
            await trio.aclose_forcefully(stream)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.tls.record_failure(classify_handshake_failure(exc), client_address)
            await trio.aclose_forcefully(stream)
            return
        if plain:
            await answer_plain_http(tcp, self.ctx, client_address)
            return
        alpn = stream.selected_alpn_protocol()
        self.tls.record_alpn(alpn)
        subject = peer_subject(stream) if self.tls.verifies_clients else None
        tls = ConnectionTls(handshake_server_name(), subject.decode("ascii") if subject is not None else None)
        conn: H1ServerConnection | H2ServerConnection
        if alpn == "h2":
            conn = H2ServerConnection(self.ctx, stream, client_address, subject, tls)
        else:
            conn = H1ServerConnection(self.ctx, stream, client_address, subject, tls)
        if self.draining:
            conn.begin_drain()
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:
            self.stats["panics"] += 1
            log.exception("unexpected error on the connection from %s", client_address)
            await trio.aclose_forcefully(stream)
        finally:
            self.connections.discard(conn)

    def use_tls(self, tls: BootstrapTls) -> None:
        """Certificate reload: ``tls`` serves handshakes that start from now on (its
        ``stats`` become the listener's running counts); open connections keep theirs."""
        tls.stats = self.tls.stats
        self.tls = tls

    def begin_drain(self) -> None:
        """Stop accepting; GOAWAY on HTTP/2, ``connection: close`` or close on HTTP/1.1."""
        self.draining = True
        self._accept_scope.cancel()
        for conn in list(self.connections):
            conn.begin_drain()
