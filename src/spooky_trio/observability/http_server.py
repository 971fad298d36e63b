"""A small plain-HTTP/1.1 server on Trio + h11 for the metrics endpoint and the control API.

Each :class:`HttpEndpoint` binds one TCP socket (:meth:`HttpEndpoint.bind`, synchronous so a
bind failure surfaces before readiness), then :meth:`HttpEndpoint.serve` accepts connections
in its own nursery. ``max_connections`` caps open connections (an extra one is closed at
once and reported through ``on_limit_drop``); ``connection_timeout`` bounds each
connection's whole life. Requests are answered one at a time with keep-alive; request bodies
are kept up to ``max_body_bytes`` (a larger one is answered 413 and the connection closed).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

log = logging.getLogger("spooky.observability.http")

#: largest request head accepted
MAX_HEAD_BYTES = 16 * 1024
#: largest request body kept by default (a config document for ``/admin/config/apply``)
MAX_BODY_BYTES = 1024 * 1024


class _BodyTooLarge(Exception):
    pass


@attrs.frozen
class HttpRequest:
    """What a handler sees: method, target path (without query), headers (lower-case
    names), the raw query string and the request body."""

    method: str
    path: str
    headers: dict[str, str]
    query: str = ""
    body: bytes = b""


@attrs.frozen
class HttpResponse:
    """What a handler returns."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    #: called once the response was written (or the write failed), e.g. to start a restart
    after_send: Callable[[], None] | None = attrs.field(default=None, eq=False)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpEndpoint:
    """One listening socket answering through ``handler``; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        port: int,
        handler: Handler,
        max_connections: int,
        connection_timeout: float,
        on_limit_drop: Callable[[], None] = lambda: None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.handler = handler
        self.max_connections = max_connections
        self.connection_timeout = connection_timeout
        self.on_limit_drop = on_limit_drop
        self.max_body_bytes = max_body_bytes
        self.open_connections = 0
        self._sock: socket.socket | None = None

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def bind(self) -> None:
        """Bind and listen now (port 0 picks a free port, then ``port`` is the real one)."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]

    def unbind(self) -> None:
        """Close a socket bound but never served (a reload that did not commit)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled. Call :meth:`bind` first."""
        assert self._sock is not None, "bind() first"
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                if self.open_connections >= self.max_connections:
                    self.on_limit_drop()
                    await trio.aclose_forcefully(stream)
                    continue
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        try:
            with trio.move_on_after(self.connection_timeout):
                await self._serve_requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("%s connection ended: %r", self.name, exc)
        except Exception:
            log.exception("%s: unexpected error serving a connection", self.name)
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_requests(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await self._next_request(conn, stream, self.max_body_bytes)
            except _BodyTooLarge:
                if conn.our_state is h11.SEND_RESPONSE:
                    await self._send(conn, stream, "POST", HttpResponse(413, b"request body too large\n"))
                return
            if request is None:
                return
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("%s: handler failed for %s %s", self.name, request.method, request.path)
                response = HttpResponse(500, b"internal error\n")
            try:
                await self._send(conn, stream, request.method, response)
            finally:
                if response.after_send is not None:
                    response.after_send()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    @staticmethod
    async def _next_request(conn: h11.Connection, stream: trio.SocketStream, max_body: int) -> HttpRequest | None:
        request: HttpRequest | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in event.headers}
                target, _, query = event.target.decode("latin-1").partition("?")
                # methods are case-sensitive (RFC 9110 9.1), and h11 frames the response by
                # the method as sent: "HEaD" upper-cased to HEAD lost its response's body, h11
                # refused the short message and the client got nothing (fuzz_control_api)
                request = HttpRequest(event.method.decode("ascii"), target, headers, query)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise _BodyTooLarge()
            elif isinstance(event, h11.EndOfMessage):
                return None if request is None else attrs.evolve(request, body=bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    @staticmethod
    async def _send(conn: h11.Connection, stream: trio.SocketStream, method: str, response: HttpResponse) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            *response.headers,
        ]
        out = conn.send(h11.Response(status_code=response.status, headers=headers))
        if method != "HEAD" and response.body:
            out += conn.send(h11.Data(data=response.body))
        out += conn.send(h11.EndOfMessage())
        await stream.send_all(out)
