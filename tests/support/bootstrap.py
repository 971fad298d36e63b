"""Clients and peers for the TCP bootstrap listener tests: raw TLS connections, a tiny
HTTP/1.1 exchange over them, and a WebSocket echo backend (hypercorn ASGI)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.asgi import serve_lifespan


def client_context(certs_dir: Path, *, alpn: list[str] | None = None, cert: Any = None) -> ssl.SSLContext:
    """A client context trusting the test CA; ``cert`` is a trustme LeafCert to present."""
    ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


async def tls_connect(port: int, ctx: ssl.SSLContext, server_name: str | None = "localhost") -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to 127.0.0.1:port with the handshake done (raises on failure)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_name)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def read_until_close(stream: trio.abc.ReceiveStream, limit: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (a broken close counts as a close)."""
    data = bytearray()
    with trio.fail_after(limit):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_response_head(stream: trio.abc.ReceiveStream, limit: float = 5.0) -> tuple[bytes, bytes]:
    """(head up to the blank line, bytes after it) of the next raw HTTP/1.1 response."""
    data = bytearray()
    with trio.fail_after(limit):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError(f"closed after {bytes(data)!r}")
            data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return head, rest


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@attrs.define(eq=False)
class WsBackend:
    """A running WebSocket echo backend; ``url`` goes into a proxy config."""

    port: int = 0
    handshakes: list[dict[str, Any]] = attrs.Factory(list)
    http_requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _ws_app(backend: WsBackend) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] == "http":
            backend.http_requests += 1
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-length", b"9")]})
            await send({"type": "http.response.body", "body": b"forbidden"})
            return
        backend.handshakes.append({"path": scope["path"], "headers": [(bytes(n), bytes(v)) for n, v in scope["headers"]], "http_version": scope["http_version"]})
        await receive()  # websocket.connect
        if scope["path"].endswith("/refuse"):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close-please":
                await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
                return
            await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})

    return app


@contextlib.asynccontextmanager
async def run_ws_backend() -> AsyncIterator[WsBackend]:
    """Serve the echo app on 127.0.0.1 (cleartext HTTP/1.1). ``/…/refuse`` closes the
    handshake (403); a text ``close-please`` makes the backend close with code 4000;
    plain HTTP requests get 403."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.2
    config.websocket_max_message_size = 8 * 1024 * 1024
    backend = WsBackend()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(_ws_app(backend), config, task_status=task_status))  # type: ignore[arg-type]
        backend.port = int(binds[0].rsplit(":", 1)[1])
        failure: BaseException | None = None
        try:
            yield backend
        except BaseException as exc:  # re-raised outside the nursery, not wrapped in a group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
