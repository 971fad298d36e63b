"""Real backends for tests: hypercorn serving a small ASGI app in-process on Trio.

Usage::

    async with run_backend(name="h1") as backend:               # HTTP/1.1 cleartext
        ... backend.url == "http://127.0.0.1:PORT"
    async with run_backend(name="h2", tls=True, certfile=..., keyfile=...) as backend:
        ... backend.url == "https://localhost:PORT"  # HTTP/2 (ALPN h2); the name matches the
                                                     # certs_dir fixture's localhost certificate

Routes (any method unless noted):

* ``/hold``: reads nothing until ``Backend.release_holds()``, then counts the body and answers its length.
* ``/echo``: 200 JSON ``{backend, method, path, query, headers: [[name, value], ...],
  body_len, body_sha256, http_version, client: [host, port]}``. ``POST /echo?raw=1``
  streams the request body back byte-exact instead (no content-length).
* ``/bytes/<n>``: n bytes of :func:`pattern_bytes` in 64 KiB chunks, with content-length.
* ``/chunked/<n>``: the same without content-length (chunked on HTTP/1.1).
* ``/slow/<ms>``: waits ms before the response head. ``/slowbody/<ms>``: head, then waits ms
  before the body.
* ``/trailers``: body plus trailers ``grpc-status: 0``, ``grpc-message: ok`` (HTTP/2 only, and
  only when the request carried ``te: trailers`` -- a hypercorn rule).
* ``/status/<code>``: that status. ``/health``: 200 "ok". ``/headers``: JSON ``{"headers": [...]}``.
* Health hooks: ``Backend.health_status`` is what ``/health`` answers (200 unless a test
  changes it; each ``/health`` record gets the answered ``status``); ``Backend.fail_status``,
  when set, is answered to every request on any path.
* Anything else: 404. Routes also match under any path prefix (``/ok/slow/5`` is ``/slow/5``),
  because proxy pools mounted at a prefix forward the full path; ``path`` in records and in
  the echo JSON is always the full path as received.

``Backend.requests`` records each request as a dict (``method``, ``path``, ``query``,
``headers``, ``http_version``, ``client``, and ``body_len``: None until the request body was
received completely, with ``body_sha256`` beside it then). It is appended when the request
arrives, before any delay.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.protocol.h3 import H3Protocol
from hypercorn.protocol.quic import QuicProtocol
from hypercorn.trio import serve

from tests.support.asgi import serve_lifespan

_PATTERN = bytes(range(256))
_CHUNK = 64 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def pattern_bytes(n: int) -> bytes:
    """``n`` bytes of the repeating pattern 0x00..0xff (what /bytes and /chunked send)."""
    return (_PATTERN * (n // 256 + 1))[:n]


@attrs.define(eq=False)
class Backend:
    """A running test backend. ``url`` is what a proxy config's ``address`` takes."""

    name: str
    host: str
    port: int
    tls: bool
    requests: list[dict[str, Any]] = attrs.Factory(list)
    #: status ``/health`` answers (toggle it to make active health checks fail)
    health_status: int = 200
    #: when set, every request on any path gets this status (a backend failing wholesale)
    fail_status: int | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)
    _holds_released: trio.Event = attrs.Factory(trio.Event)

    def release_holds(self) -> None:
        """Let every ``/hold`` request start reading its body."""
        self._holds_released.set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def connection_count(self) -> int:
        """Distinct client connections (client address and port) seen so far."""
        return len({tuple(r["client"]) for r in self.requests})

    async def wait_for_requests(self, n: int) -> None:
        """Wait until at least ``n`` requests have arrived."""
        while len(self.requests) < n:
            await self._changed.wait()

    def _record(self, record: dict[str, Any]) -> None:
        self.requests.append(record)
        changed, self._changed = self._changed, trio.Event()
        changed.set()


async def _read_body(receive: Receive, record: dict[str, Any]) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(parts)
            record["body_len"] = len(body)
            record["body_sha256"] = hashlib.sha256(body).hexdigest()
            return body


class _Disconnected(Exception):
    pass


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, data: Any) -> None:
    await _respond(send, 200, json.dumps(data).encode(), b"application/json")


async def _send_pattern(send: Send, n: int, *, with_length: bool, record: dict[str, Any]) -> None:
    """Stream n pattern bytes; ``record["sent"]`` counts what the server has accepted so far
    (hypercorn's send waits for the socket, so it shows how far backpressure let us go)."""
    headers = [(b"content-type", b"application/octet-stream")]
    if with_length:
        headers.append((b"content-length", str(n).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    chunk = pattern_bytes(_CHUNK)  # _CHUNK is a multiple of 256: every chunk starts the pattern afresh
    record["sent"] = 0
    for offset in range(0, n, _CHUNK):
        piece = chunk[: min(_CHUNK, n - offset)]
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        record["sent"] += len(piece)
    await send({"type": "http.response.body", "body": b""})


async def _raw_echo(receive: Receive, send: Send, record: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        total += len(chunk)
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not message.get("more_body", False):
            break
    record["body_len"] = total
    await send({"type": "http.response.body", "body": b""})


def _make_app(backend: Backend) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "http_version": scope["http_version"],
            "client": list(scope.get("client") or ("", 0)),
            "body_len": None,
        }
        backend._record(record)
        try:
            await _route(backend, scope, receive, send, record)
        except _Disconnected:
            return

    return app


_ROUTES = frozenset({"hold", "echo", "bytes", "chunked", "slow", "slowbody", "trailers", "status", "health", "headers"})


def _route_path(path: str) -> str:
    """``path`` from its first known route segment on: ``/ok/slow/5`` -> ``/slow/5``."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment in _ROUTES:
            return "/" + "/".join(segments[index:])
    return path


async def _route(backend: Backend, scope: Scope, receive: Receive, send: Send, record: dict[str, Any]) -> None:
    path = _route_path(scope["path"])
    if backend.fail_status is not None:
        await _read_body(receive, record)
        await _respond(send, backend.fail_status, f"failing with {backend.fail_status}".encode())
        return
    head, _, arg = path.lstrip("/").partition("/")
    if path == "/echo" and scope["method"] == "POST" and "raw=1" in record["query"].split("&"):
        await _raw_echo(receive, send, record)
        return
    if head == "hold":
        # read nothing until the test releases us, then count the body without keeping it
        await backend._holds_released.wait()
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        record["body_len"] = total
        await _respond(send, 200, str(total).encode())
        return
    body = await _read_body(receive, record)
    if path == "/echo":
        await _json(
            send,
            {
                "backend": backend.name,
                "method": record["method"],
                "path": record["path"],
                "query": record["query"],
                "headers": record["headers"],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "http_version": record["http_version"],
                "client": record["client"],
            },
        )
    elif head == "bytes" and arg.isdigit():
        await _send_pattern(send, int(arg), with_length=True, record=record)
    elif head == "chunked" and arg.isdigit():
        await _send_pattern(send, int(arg), with_length=False, record=record)
    elif head == "slow" and arg.isdigit():
        await trio.sleep(int(arg) / 1000)
        await _respond(send, 200, b"slow ok")
    elif head == "slowbody" and arg.isdigit():
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]})
        await trio.sleep(int(arg) / 1000)
        await send({"type": "http.response.body", "body": b"slow body"})
    elif path == "/trailers":
        trailers = "http.response.trailers" in scope.get("extensions", {})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")], "trailers": trailers})
        await send({"type": "http.response.body", "body": b"trailer body"})
        if trailers:
            await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]})
    elif head == "status" and arg.isdigit():
        status = int(arg)
        await _respond(send, status, b"" if status in (204, 304) or status < 200 else f"status {status}".encode())
    elif path == "/health":
        record["status"] = backend.health_status  # what this probe was answered
        await _respond(send, backend.health_status, b"ok" if backend.health_status < 400 else b"unhealthy")
    elif path == "/headers":
        await _json(send, {"headers": record["headers"]})
    else:
        await _respond(send, 404, b"not found")


def serialize_hypercorn_quic() -> None:
    """Work around two hypercorn 0.18 (trio) HTTP/3 server bugs. Installed once per process.

    * A race that drops requests under bursts: its receive loop and its per-connection
      timer task both run ``_handle_events``, and every transmit restarts (cancels) the
      timer task -- possibly while that task is in the middle of handing a request to the
      application, which is then silently lost. Serialising the processing and shielding it
      from that cancellation makes the server deterministic.
    * It does not notice a client's RESET_STREAM on HTTP/3 (aioquic gives it no H3 event):
      an application answering a stream the client reset raises ``ValueError`` from
      aioquic inside hypercorn's task group, which ends the whole server. The answer to a
      reset stream is dropped instead, as a server must.

    So the tests exercise our side rather than the fixture's bugs.
    """
    original = QuicProtocol._handle_events
    if getattr(original, "_spooky_serialized", False):
        return
    original_send = H3Protocol.stream_send

    async def stream_send(self: H3Protocol, event: Any) -> None:
        try:
            await original_send(self, event)
        except ValueError:  # "Cannot send data on a finished stream": the client reset it
            pass

    H3Protocol.stream_send = stream_send  # type: ignore[method-assign]

    async def _handle_events(self: QuicProtocol, connection: Any, client: Any = None) -> None:
        with trio.CancelScope(shield=True):
            lock = self.__dict__.setdefault("_spooky_test_events_lock", trio.Lock())
            async with lock:
                await original(self, connection, client)

    _handle_events._spooky_serialized = True  # type: ignore[attr-defined]
    QuicProtocol._handle_events = _handle_events  # type: ignore[method-assign]


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` a moment ago (hypercorn binds both)."""
    import socket

    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no port free for both TCP and UDP")


@contextlib.asynccontextmanager
async def run_backend(
    *,
    tls: bool = False,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    name: str = "backend",
    keep_alive_timeout: float = 5.0,
    host: str = "127.0.0.1",
    port: int = 0,
    quic: bool = False,
    alt_svc: list[str] | None = None,
) -> AsyncIterator[Backend]:
    """Serve the test app on 127.0.0.1 (a free port) for the duration of the block.

    ``host``/``port`` bind another loopback address or a given port instead (DNS tests
    serve two backends on one port at 127.0.0.1 and 127.0.0.2).

    ``tls=True`` needs ``certfile``/``keyfile`` and serves HTTP/2 with ALPN h2 (and http/1.1);
    the URL then names ``localhost``. ``quic=True`` (with TLS) also serves HTTP/3 on the same
    port number over UDP, and every answer then carries ``Alt-Svc: h3=":PORT"; ma=3600``
    unless ``alt_svc`` gives the field values to send instead.
    ``keep_alive_timeout`` is how long hypercorn keeps an idle HTTP/1.1 connection open.
    Leaving the block stops the server at once.
    """
    if tls and (certfile is None or keyfile is None):
        raise ValueError("a TLS backend needs certfile and keyfile")
    if quic and not tls:
        raise ValueError("HTTP/3 needs tls=True")
    config = Config()
    if quic:
        serialize_hypercorn_quic()
        port = port or _free_port(host)
        config.quic_bind = [f"{host}:{port}"]
        if alt_svc:
            config.alt_svc_headers = alt_svc
    config.bind = [f"{host}:{port}"]
    config.keep_alive_timeout = keep_alive_timeout
    config.graceful_timeout = 0.5
    config.accesslog = None
    config.errorlog = None
    if tls:
        config.certfile, config.keyfile = str(certfile), str(keyfile)
        config.alpn_protocols = ["h2", "http/1.1"]
    backend = Backend(name=name, host="localhost" if tls else host, port=0, tls=tls)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(_make_app(backend), config, task_status=task_status))  # type: ignore[arg-type]
        backend.port = int(binds[0].rsplit(":", 1)[1])
        failure: BaseException | None = None
        try:
            yield backend
        except BaseException as exc:  # re-raised outside the nursery, not wrapped in a group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


@attrs.define(eq=False)
class RawBackend:
    """A raw TCP server; ``connections`` counts accepted connections."""

    port: int
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def run_raw_backend(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[RawBackend]:
    """Run ``handler(stream)`` for every connection to 127.0.0.1:PORT (for misbehaving backends).

    The handler owns the stream; it is closed when the handler returns. Handler exceptions
    from broken connections (BrokenResourceError, ClosedResourceError) are ignored.
    """
    backend = RawBackend(port=0)

    async def serve_one(stream: trio.SocketStream) -> None:
        backend.connections += 1
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        backend.port = listeners[0].socket.getsockname()[1]
        failure: BaseException | None = None
        try:
            yield backend
        except BaseException as exc:  # re-raised outside the nursery, not wrapped in a group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
