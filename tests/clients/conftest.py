"""A real HTTP/3 + HTTP/2 + HTTP/1.1 server for the client tests: hypercorn on Trio with TLS."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.backends import serialize_hypercorn_quic

MiB = 1024 * 1024


def pattern_bytes(size: int) -> bytes:
    """Deterministic, non-repeating-looking payload (byte-exactness checks catch shifts)."""
    block = bytes((i * 31 + (i >> 8) * 7) & 0xFF for i in range(65521))  # prime length
    return (block * (size // len(block) + 1))[:size]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes: ``/echo`` (body back, request facts in headers), ``/bytes/N``, ``/trailers``."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    if path.startswith("/bytes/"):
        size = int(path.removeprefix("/bytes/"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        data = pattern_bytes(size)
        for offset in range(0, size, 256 * 1024):
            await send({"type": "http.response.body", "body": data[offset : offset + 256 * 1024], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")], "trailers": True})
        await send({"type": "http.response.body", "body": b"with trailers\n"})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})
    else:
        info = {
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "http_version": scope["http_version"],
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body_len": len(body),
        }
        raw = path == "/raw"
        await send({
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [(b"x-info", json.dumps(info).encode())] if raw else [(b"content-type", b"application/json")],
        })
        await send({"type": "http.response.body", "body": bytes(body) if raw else json.dumps(info).encode()})


def free_port() -> int:
    """A port number free for both TCP and UDP on 127.0.0.1 (hypercorn binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@attrs.define
class Server:
    port: int
    certs_dir: Path

    @property
    def cafile(self) -> str:
        return str(self.certs_dir / "ca.pem")


@pytest.fixture
async def server(certs_dir: Path) -> AsyncIterator[Server]:
    """hypercorn serving :func:`app`: HTTP/3 on UDP ``port``, h2/http1.1 over TLS on TCP ``port``."""
    serialize_hypercorn_quic()  # a hypercorn QUIC race that drops requests (tests/support/backends.py)
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.quic_bind = [f"127.0.0.1:{port}"]
    config.certfile = str(certs_dir / "localhost.pem")
    config.keyfile = str(certs_dir / "localhost.key")
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.2  # the tests close their connections; don't linger on exit
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status))
        yield Server(port, certs_dir)
        shutdown.set()
