"""A real ``redis-server`` for tests, on a free loopback port (Debian package ``redis-server``).

``async with running_redis() as redis:`` starts it (skipped on a developer machine without
it, a failure under ``CI=true``: tests/support/tools.py); ``redis.url`` is its
``redis://127.0.0.1:PORT/0``. ``stop()`` kills it (a crash: no graceful shutdown) and
``start()`` brings it back on the same port, empty; ``pause()``/``resume()`` freeze it with
SIGSTOP/SIGCONT (a Redis that accepts connections and answers nothing);
``command(...)`` runs one command with ``redis-cli`` (tests read buckets with it).
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.support.tools import require


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process (module docstring)."""

    def __init__(self, binary: str, port: int, extra: list[str], tls_port: int | None = None) -> None:
        self.binary = binary
        self.port = port
        #: the TLS port (``running_redis(tls=...)``), else None
        self.tls_port = tls_port
        self.extra = extra
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--enable-debug-command", "yes", *self.extra]
        self.process = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to the clients; a paused one never runs again)."""
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                process.kill()
            await process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def command(self, *args: str) -> str:
        """Run one command with redis-cli (installed with redis-server); its raw output."""
        result = await trio.run_process(["redis-cli", "-p", str(self.port), *args], capture_stdout=True,
                                        capture_stderr=True)
        return result.stdout.decode().strip()


@asynccontextmanager
async def running_redis(*extra: str, tls: Path | None = None) -> AsyncIterator[RedisServer]:
    """Start redis-server (``extra``: more command-line options; ``tls``: a directory with
    ``localhost.pem``/``localhost.key``, served on ``tls_port`` too), stop it at the end."""
    binary = require("redis-server", "redis-server")
    options = list(extra)
    tls_port = None
    if tls is not None:
        tls_port = _free_tcp_port()
        options += ["--tls-port", str(tls_port), "--tls-cert-file", str(tls / "localhost.pem"),
                    "--tls-key-file", str(tls / "localhost.key"), "--tls-auth-clients", "no"]
    server = RedisServer(binary, _free_tcp_port(), options, tls_port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
