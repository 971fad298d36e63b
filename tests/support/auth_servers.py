"""A real identity provider and auth service for the auth tests: hypercorn on loopback, over
HTTPS with the test CA's certificate (or cleartext HTTP), scripted by the test.

Routes:

* ``GET /jwks``: the JWK Set ``AuthServer.jwks`` (bytes); ``jwks_status`` other than 200
  answers that status instead. Each fetch is appended to ``jwks_fetches``.
* ``GET /.well-known/openid-configuration`` (and ``/discovery``): a discovery document
  naming ``/introspect`` on this server; counted in ``discovery_fetches``.
* ``POST /introspect``: the form is appended to ``introspections`` (with the request
  headers); answers ``introspection`` as JSON with ``introspection_status``.
* ``GET /check``: external auth of kind http: records the request headers in ``checks``,
  waits ``check_delay`` seconds, answers ``check_status`` with ``check_headers`` and
  ``check_body``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.asgi import serve_lifespan


@attrs.define(eq=False)
class AuthServer:
    host: str
    port: int
    tls: bool
    jwks: bytes = b'{"keys": []}'
    jwks_status: int = 200
    jwks_fetches: list[float] = attrs.Factory(list)
    discovery_fetches: int = 0
    discovery_status: int = 200
    introspection: dict[str, Any] = attrs.Factory(lambda: {"active": True})
    introspection_status: int = 200
    introspections: list[dict[str, Any]] = attrs.Factory(list)
    introspection_delay: float = 0.0
    check_status: int = 200
    check_headers: list[tuple[str, str]] = attrs.Factory(list)
    check_body: bytes = b""
    check_delay: float = 0.0
    checks: list[dict[str, list[str]]] = attrs.Factory(list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


async def _body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _app(server: AuthServer) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        body = await _body(receive)
        status, out_headers, out = 404, [(b"content-type", b"text/plain")], b"not found"
        if path == "/jwks":
            server.jwks_fetches.append(trio.current_time())
            status, out = server.jwks_status, server.jwks if server.jwks_status == 200 else b"unavailable"
            out_headers = [(b"content-type", b"application/json")]
        elif path in ("/.well-known/openid-configuration", "/discovery"):
            server.discovery_fetches += 1
            status = server.discovery_status
            out = json.dumps({"issuer": server.url, "introspection_endpoint": f"{server.url}/introspect"}).encode()
        elif path == "/introspect" and scope["method"] == "POST":
            server.introspections.append({"form": dict(parse_qsl(body.decode())), "headers": headers})
            await trio.sleep(server.introspection_delay)
            status, out = server.introspection_status, json.dumps(server.introspection).encode()
            out_headers = [(b"content-type", b"application/json")]
        elif path == "/check":
            server.checks.append({**headers, ":method": [scope["method"]]})
            await trio.sleep(server.check_delay)
            status, out = server.check_status, server.check_body
            out_headers = [(n.encode(), v.encode()) for n, v in server.check_headers]
        out_headers.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out})

    return app


@contextlib.asynccontextmanager
async def run_auth_server(certs_dir: Path | None) -> AsyncIterator[AuthServer]:
    """Serve on 127.0.0.1 (a free port): HTTPS as ``localhost`` with the test CA's
    certificate when ``certs_dir`` is given, else cleartext HTTP."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.2
    config.accesslog = None
    config.errorlog = None
    if certs_dir is not None:
        config.certfile, config.keyfile = str(certs_dir / "localhost.pem"), str(certs_dir / "localhost.key")
        config.alpn_protocols = ["http/1.1"]
    server = AuthServer(host="localhost" if certs_dir is not None else "127.0.0.1", port=0, tls=certs_dir is not None)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(_app(server), config, task_status=task_status))  # type: ignore[arg-type]
        server.port = int(binds[0].rsplit(":", 1)[1])
        failure: BaseException | None = None
        try:
            yield server
        except BaseException as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
