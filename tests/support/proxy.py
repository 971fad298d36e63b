"""Run the real proxy in-process for integration tests.

``running_proxy(yaml_text)`` loads the text through the real config loader, binds real
sockets on 127.0.0.1 and yields the :class:`Server`; leaving the block drains it.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from spooky_trio.config import load_config_text
from spooky_trio.serving.server import Server


def free_udp_port() -> int:
    """A port free a moment ago for UDP (QUIC) and TCP (the bootstrap listener binds the same
    number); TCP is checked because client connections take ports from the same range."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no port free for both UDP and TCP")


def proxy_yaml(upstream: str, *, certs_dir: Path, port: int | None = None, extra: str = "") -> str:
    """A complete config: one loopback listener with the test certificate plus ``upstream``.

    ``upstream`` is the YAML body of the ``upstream:`` map (any indentation; it is re-indented).
    ``extra`` adds top-level sections (performance, resilience, ...).
    """
    port = port or free_udp_port()
    return (
        "version: 1\n"
        "listen:\n"
        "  address: 127.0.0.1\n"
        f"  port: {port}\n"
        "  tls:\n"
        f"    cert: {certs_dir / 'localhost.pem'}\n"
        f"    key: {certs_dir / 'localhost.key'}\n"
        "upstream:\n"
        + textwrap.indent(textwrap.dedent(upstream).strip("\n"), "  ")
        + "\n"
        "security:\n"
        "  privileges:\n"
        "    enabled: false\n"
        + textwrap.dedent(extra)
    )


def h1_pool(url: str, prefix: str = "/", name: str = "app") -> str:
    """An ``upstream:`` entry routing ``prefix`` to one HTTP/1.1 backend ``{name}-1``."""
    return f"""
    {name}:
      route:
        path_prefix: "{prefix}"
      backends:
        - id: "{name}-1"
          address: "{url}"
"""


def h2_pool(port: int, certs_dir: Path, name: str = "api") -> str:
    """An ``upstream:`` entry routing ``/`` to the HTTP/2 TLS backend ``https://localhost:PORT``,
    trusting the test CA through the pool's ``tls.ca_file``."""
    return f"""
    {name}:
      route:
        path_prefix: "/"
      tls:
        ca_file: "{certs_dir / 'ca.pem'}"
      backends:
        - id: "{name}-1"
          address: "https://localhost:{port}"
"""


@asynccontextmanager
async def running_proxy(yaml_text: str, *, config_path: Path | None = None) -> AsyncIterator[Server]:
    """``config_path``: the file reloads re-read (written with ``yaml_text`` first)."""
    if config_path is not None:
        config_path.write_text(yaml_text)
    config = load_config_text(yaml_text)
    server = Server(config, config_path=None if config_path is None else str(config_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(handle_signals=False, task_status=task_status))
        try:
            yield server
        finally:
            server.request_drain()
            with trio.move_on_after(10):
                await server.stopped.wait()
            nursery.cancel_scope.cancel()
