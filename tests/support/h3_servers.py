"""HTTP/3 peers for the upstream HTTP/3 tests, beside hypercorn (``backends.run_backend(quic=True)``).

* :func:`run_gtlsserver`: ngtcp2's example server ``gtlsserver`` (Debian package
  ``ngtcp2-server``), an HTTP/3 stack independent of aioquic. It serves the files of its
  document root (``Gtls.files``), ``/N`` as N zero bytes, and, with ``--send-trailers``,
  a trailer section after every body; it reads and drops request bodies.
* :class:`UdpRelay`: a UDP forwarder on 127.0.0.1 to a QUIC server, which a test can
  ``block()`` (every datagram dropped both ways, as a firewall would) and ``unblock()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.clients.errors import H3ClientError
from tests.support.tools import require


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Gtls:
    port: int
    root: Path
    #: name -> content of the files served
    files: dict[str, bytes]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@contextlib.asynccontextmanager
async def run_gtlsserver(certs_dir: Path, root: Path, *, files: dict[str, bytes] | None = None, args: Sequence[str] = ()) -> AsyncIterator[Gtls]:
    """Run ``gtlsserver`` on 127.0.0.1 (a free UDP port) with the test certificate, serving
    ``files`` from ``root``, until the block ends (the process is ended by its pid)."""
    # (Debian puts it in /usr/sbin, which a non-root PATH may lack)
    binary = shutil.which("gtlsserver", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])) or require("gtlsserver", "ngtcp2-server")
    root.mkdir(parents=True, exist_ok=True)
    files = dict(files or {})
    for name, content in files.items():
        (root / name).write_bytes(content)
    port = free_udp_port()
    log = open(root.parent / f"gtlsserver-{port}.log", "wb")
    proc = subprocess.Popen(
        [binary, "-q", "-d", str(root), *args, "127.0.0.1", str(port), str(certs_dir / "localhost.key"), str(certs_dir / "localhost.pem")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        await _wait_h3(port, certs_dir, proc)
        yield Gtls(port, root, files)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


async def _wait_h3(port: int, certs_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until an HTTP/3 handshake with 127.0.0.1:port succeeds (the server is up)."""
    with trio.fail_after(20):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gtlsserver exited with status {proc.returncode}")
            try:
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem"),
                                            connect_timeout=1.0):
                    return
            except H3ClientError:
                await trio.sleep(0.05)


class UdpRelay:
    """Forward UDP datagrams from 127.0.0.1:``port`` to 127.0.0.1:``target`` and back.

    Each client address gets its own socket towards the target (so replies find their way
    back). ``block()`` drops everything in both directions; ``datagrams`` counts what passed.
    Setting ``target`` sends new client addresses elsewhere (a backend that restarted on
    another port looks to the client like the same address whose old connections are
    unknown: their packets go nowhere). Run :meth:`run` in a nursery
    (``await nursery.start(relay.run)``)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.blocked = False
        self.datagrams = 0
        self._front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._backs: dict[tuple[str, int], trio.socket.SocketType] = {}

    def block(self) -> None:
        self.blocked = True

    def unblock(self) -> None:
        self.blocked = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._front.bind(("127.0.0.1", 0))
        self.port = self._front.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    data, client = await self._front.recvfrom(65536)
                    if self.blocked:
                        continue
                    back = self._backs.get(client)
                    if back is None:
                        back = self._backs[client] = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        await back.connect(("127.0.0.1", self.target))
                        nursery.start_soon(self._replies, back, client)
                    self.datagrams += 1
                    with contextlib.suppress(OSError):
                        await back.send(data)
        finally:
            self._front.close()
            for back in self._backs.values():
                back.close()

    async def _replies(self, back: trio.socket.SocketType, client: tuple[str, int]) -> None:
        while True:
            try:
                data = await back.recv(65536)
            except OSError:
                await trio.sleep(0.01)  # an ICMP error from a stopped target: keep relaying
                continue
            if not self.blocked:
                self.datagrams += 1
                await self._front.sendto(data, client)
