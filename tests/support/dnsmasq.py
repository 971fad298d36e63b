"""A real DNS server for tests: ``dnsmasq`` (Debian package ``dnsmasq-base``: the binary
without the system service) on a free loopback port, authoritative for ``.test``.

``async with running_dnsmasq(srv=[...], hosts=[...]) as dns:`` starts it (skipped on a
developer machine without it, a failure under ``CI=true``: tests/support/tools.py);
``dns.nameserver`` is ``127.0.0.1:PORT`` for ``backend_dns_nameservers``.
:meth:`Dnsmasq.serve` restarts it on the same port with other records (dnsmasq reads
``--srv-host`` only at start); a name it does not know is NXDOMAIN.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio

from tests.support.proxy import free_udp_port
from tests.support.tools import require


@attrs.frozen
class Srv:
    """One SRV record: ``name`` -> ``target:port`` with ``priority`` and ``weight``."""

    name: str
    target: str
    port: int
    priority: int = 10
    weight: int = 10

    def arg(self) -> str:
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


class Dnsmasq:
    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process: trio.Process | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, srv: Sequence[Srv] = (), hosts: Sequence[tuple[str, str]] = ()) -> None:
        """(Re)start with exactly these SRV records and ``(name, address)`` host records."""
        await self.stop()
        argv = [self.binary, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={self.port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
                "--pid-file=", "--user=root", "--log-facility=-", *(record.arg() for record in srv),
                *(f"--host-record={name},{address}" for name, address in hosts)]
        log = tempfile.TemporaryFile()
        self.process = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL, stderr=log)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 0.2
        with log, trio.fail_after(10):
            while True:  # answering (NXDOMAIN is an answer)
                if self.process.returncode is not None or self.process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"dnsmasq exited: {log.read().decode(errors='replace')}")
                try:
                    await resolver.resolve("ready.test.", "A")
                except dns.resolver.NXDOMAIN:
                    return
                except (dns.exception.DNSException, OSError):
                    await trio.sleep(0.02)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                process.kill()
            await process.wait()


@asynccontextmanager
async def running_dnsmasq(srv: Sequence[Srv] = (), hosts: Sequence[tuple[str, str]] = ()) -> AsyncIterator[Dnsmasq]:
    server = Dnsmasq(require("dnsmasq", "dnsmasq-base"), free_udp_port())  # (free for TCP too: dnsmasq binds both)
    try:
        await server.serve(srv, hosts)
        yield server
    finally:
        await server.stop()
