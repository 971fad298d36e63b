"""One instance per listener address (serving/instance_lock.py), with real processes: a
second instance on the same address and port fails at start with one line naming the
address and the first one's pid, while the workers of one instance share the port; a
killed instance does not block its restart; a reload cannot add a listener another
instance serves; ``reuseport: false`` fails with the kernel's bind error as before."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.instance_lock import InstanceLocks, lock_name, supported
from tests.integration.test_reload import AUTH, listeners_config, pool
from tests.support.backends import run_backend
from tests.support.fleet import Output
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

pytestmark = pytest.mark.skipif(not supported(), reason="the instance lock is Linux only")

NO_ENDPOINTS = "observability:\n  metrics:\n    enabled: false\n  control_api:\n    enabled: false\n"


def write(tmp_path: Path, name: str, certs_dir: Path, backend_url: str, port: int, performance: str = "") -> Path:
    path = tmp_path / name
    path.write_text(proxy_yaml(h1_pool(backend_url), certs_dir=certs_dir, port=port,
                               extra=NO_ENDPOINTS + (f"performance:\n{performance}" if performance else "")))
    return path


@asynccontextmanager
async def instance(config: Path, ready: bytes) -> AsyncIterator[tuple[trio.Process, Output]]:
    """``spooky-trio run`` until the block ends (killed then), once ``ready`` was logged."""
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    output = Output(proc.stderr)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        try:
            with trio.fail_after(30):
                await output.wait_for(ready)
            yield proc, output
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            nursery.cancel_scope.cancel()


async def second_start(config: Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                      capture_stdout=True, capture_stderr=True, check=False)


def assert_refused(result: subprocess.CompletedProcess[bytes], port: int, pid: int) -> None:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"127.0.0.1:{port}" in err and f"pid {pid}" in err and "another spooky-trio instance" in err, err


async def serves(port: int, certs_dir: Path) -> None:
    """One request over HTTP/3 and one over HTTP/2 (new connections) get the backend's 200."""
    ca = str(certs_dir / "ca.pem")
    async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as client:
        assert (await client.request("GET", "/echo", authority="localhost")).status == 200
    async with httpx.AsyncClient(http2=True, http1=False, verify=ssl.create_default_context(cafile=ca), timeout=10) as h2:
        r = await h2.get(f"https://localhost:{port}/echo")
        assert r.status_code == 200 and r.http_version == "HTTP/2"


@pytest.mark.parametrize("second_workers", [1, 2])
async def test_second_instance_on_the_same_port_fails_naming_the_first(certs_dir: Path, tmp_path: Path, second_workers: int) -> None:
    port = free_udp_port()
    async with run_backend() as backend:
        first = write(tmp_path, "first.yaml", certs_dir, backend.url, port)
        second = write(tmp_path, "second.yaml", certs_dir, backend.url, port,
                       f"  worker_threads: {second_workers}\n" if second_workers > 1 else "")
        async with instance(first, b"listening for HTTP/3") as (proc, _):
            assert_refused(await second_start(second), port, proc.pid)
            await serves(port, certs_dir)  # the first one keeps every connection
            requests = len(backend.requests)
        assert requests == 2


async def test_two_worker_instance_shares_its_port_and_refuses_a_second(certs_dir: Path, tmp_path: Path) -> None:
    port = free_udp_port()
    async with run_backend() as backend:
        config = write(tmp_path, "workers.yaml", certs_dir, backend.url, port, "  worker_threads: 2\n")
        async with instance(config, b"all 2 workers serving") as (proc, output):
            for _ in range(4):
                await serves(port, certs_dir)
            # the lock is the supervisor's (its pid in the message), the workers share it
            assert_refused(await second_start(write(tmp_path, "single.yaml", certs_dir, backend.url, port)), port, proc.pid)
            assert_refused(await second_start(config), port, proc.pid)
            await serves(port, certs_dir)
            assert b"exited with status" not in output.data  # no worker died over it


async def test_a_killed_instance_does_not_block_its_restart(certs_dir: Path, tmp_path: Path) -> None:
    port = free_udp_port()
    async with run_backend() as backend:
        config = write(tmp_path, "config.yaml", certs_dir, backend.url, port)
        async with instance(config, b"listening for HTTP/3") as (proc, _):
            proc.kill()  # SIGKILL: no cleanup ran
            await proc.wait()
        async with instance(config, b"listening for HTTP/3"):
            await serves(port, certs_dir)


async def test_without_reuseport_the_bind_error_refuses_the_second(certs_dir: Path, tmp_path: Path) -> None:
    port = free_udp_port()
    async with run_backend() as backend:
        config = write(tmp_path, "config.yaml", certs_dir, backend.url, port, "  reuseport: false\n")
        async with instance(config, b"listening for HTTP/3"):
            result = await second_start(config)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot bind UDP 127.0.0.1:{port}: Address already in use" in err and "instance" not in err


async def test_a_reload_cannot_add_a_listener_another_instance_serves(certs_dir: Path) -> None:
    p1, p2, cport, mport = free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port()
    other = InstanceLocks()  # another instance's lock (this process's pid: it is its holder)
    other.acquire("127.0.0.1", p2)
    pools = pool("app", "/", [("b1", "http://127.0.0.1:9")])

    def cfg(*ports: int) -> str:
        return listeners_config(certs_dir, list(ports), cport, mport, pools)

    try:
        async with running_proxy(cfg(p1)) as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            r = await api.post("/admin/config/apply", content=cfg(p1, p2))
            assert r.status_code == 422, r.text
            error = r.json()["errors"][0]
            assert error["path"] == "listeners[1].port" and f"127.0.0.1:{p2}" in error["message"]
            assert f"pid {os.getpid()}" in error["message"] and "another spooky-trio instance" in error["message"]
            assert [q.port for q in server.listeners] == [p1]
            other.release_all()
            assert (await api.post("/admin/config/apply", content=cfg(p1, p2))).status_code == 200
            assert set(server.locks.held) == {lock_name("127.0.0.1", p1), lock_name("127.0.0.1", p2)}
            removed = server._pairs[1]
            assert (await api.post("/admin/config/apply", content=cfg(p1))).status_code == 200
            with trio.fail_after(10):
                await removed.done.wait()
            assert server.locks.held == [lock_name("127.0.0.1", p1)]  # a removed listener frees its lock
        assert server.locks.held == []
    finally:
        other.release_all()
