"""A real etcd v3 for tests (Debian package ``etcd-server``), one member on free loopback
ports with its data in a temporary directory.

``async with running_etcd(tmp_path) as etcd:`` starts it (skipped on a developer machine
without it, a failure under ``CI=true``: tests/support/tools.py); ``etcd.url`` is its
client URL. ``put``, ``delete``, ``compact`` and ``revision`` talk to its JSON gateway
(httpx); ``stop()`` kills it (SIGKILL: a crash) and ``start()`` brings it back with the
same data on the same ports. ``tls=(ca, cert, key)`` serves HTTPS and requires client
certificates signed by that CA; :meth:`EtcdServer.enable_auth` adds the ``root`` user and
turns authentication on.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.support.tools import require


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdServer:
    def __init__(self, binary: str, data_dir: Path, tls: tuple[Path, Path, Path] | None, extra: list[str]) -> None:
        self.binary = binary
        self.extra = extra
        self.data_dir = data_dir
        self.tls = tls
        self.client_port = _free_tcp_port()
        self.peer_port = _free_tcp_port()
        self.process: trio.Process | None = None
        self.token: str | None = None
        self.password: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    def _client(self) -> httpx.AsyncClient:
        if self.tls is None:
            return httpx.AsyncClient(timeout=5)
        ca, cert, key = self.tls
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        return httpx.AsyncClient(timeout=5, verify=context)

    async def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [self.binary, "--name", "t", "--data-dir", str(self.data_dir), "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", "--log-level", "error", "--logger", "zap", *self.extra]
        if self.tls is not None:
            ca, cert, key = self.tls
            argv += ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca), "--client-cert-auth"]
        self.process = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with trio.fail_after(20):
            while True:
                try:
                    await self.revision()
                    return
                except (httpx.HTTPError, KeyError, ValueError):
                    await trio.sleep(0.05)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                process.kill()
            await process.wait()

    async def call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        headers = {"authorization": self.token} if self.token else {}
        async with self._client() as client:
            response = await client.post(self.url + path, json=body, headers=headers)
            if response.status_code == 401 and self.password is not None:  # the token expired: log in again
                login = await client.post(self.url + "/v3/auth/authenticate", json={"name": "root", "password": self.password})
                self.token = str(login.json()["token"])
                response = await client.post(self.url + path, json=body, headers={"authorization": self.token})
        document = json.loads(response.content)
        assert response.status_code == 200, (path, response.status_code, document)
        assert isinstance(document, dict)
        return document

    async def put(self, key: str, value: str | bytes) -> int:
        """Set ``key``; returns the store's revision after it."""
        return int(str(dict(await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}))["header"]["revision"]))  # type: ignore[index]

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": _b64(key)})

    async def revision(self) -> int:
        document = await self.call("/v3/kv/range", {"key": _b64("\0"), "limit": 1})
        return int(str(document["header"]["revision"]))  # type: ignore[index]

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def enable_auth(self, password: str) -> None:
        """Add ``root`` with ``password`` (and the root role) and turn authentication on."""
        await self.call("/v3/auth/role/add", {"name": "root"})
        await self.call("/v3/auth/user/add", {"name": "root", "password": password})
        await self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await self.call("/v3/auth/enable", {})
        document = await self.call("/v3/auth/authenticate", {"name": "root", "password": password})
        self.token, self.password = str(document["token"]), password


@asynccontextmanager
async def running_etcd(data_dir: Path, tls: tuple[Path, Path, Path] | None = None,
                       extra: list[str] | None = None) -> AsyncIterator[EtcdServer]:
    """``extra``: more etcd options (``--auth-token-ttl 1``)."""
    server = EtcdServer(require("etcd", "etcd-server"), data_dir, tls, list(extra or ()))
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
