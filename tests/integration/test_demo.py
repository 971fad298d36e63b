"""`make run` (devtools/demo.py and conf/dev.yaml) as a newcomer meets it: a taken port is
one line with a `make run PORT=... ORIGIN_PORT=...` to try, a second Ctrl-C stops at once
with exit status 1, and the dev config does not shed 100 concurrent requests (`h2load -c
10 -m 10`) to its one origin."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import Backend, run_backend
from tests.support.fleet import Output
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

REPO = Path(__file__).resolve().parents[2]
NO_ENDPOINTS = "observability:\n  metrics:\n    enabled: false\n  control_api:\n    enabled: false\n"


def demo_argv(config: Path, port: int, origin_port: int) -> list[str]:
    """What `make run PORT=port ORIGIN_PORT=origin_port` runs (with another config)."""
    return [sys.executable, "-m", "spooky_trio.devtools.demo", "--config", str(config), "--port", str(port), "--origin-port", str(origin_port)]


def write_config(tmp_path: Path, certs_dir: Path, backend_url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(proxy_yaml(h1_pool(backend_url), certs_dir=certs_dir, extra=NO_ENDPOINTS))
    return path


def one_line_with_hint(result: subprocess.CompletedProcess[str]) -> re.Match[str]:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    hint = re.search(r"; choose other ports: make run PORT=(\d+) ORIGIN_PORT=(\d+)$", result.stderr.strip())
    assert hint and result.stderr.startswith("make run: "), result.stderr
    return hint


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_a_taken_proxy_port_is_one_line_with_other_ports(tmp_path: Path, certs_dir: Path, kind: int) -> None:
    port, origin = free_udp_port(), free_udp_port()
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        result = subprocess.run(demo_argv(write_config(tmp_path, certs_dir), port, origin), capture_output=True, text=True, timeout=60)
    hint = one_line_with_hint(result)
    protocol = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    assert f"the proxy cannot start: cannot bind {protocol} 127.0.0.1:{port}: Address already in use" in result.stderr
    assert int(hint.group(1)) != port and int(hint.group(2)) == origin


def test_a_taken_origin_port_is_one_line_with_other_ports(tmp_path: Path, certs_dir: Path) -> None:
    port, origin = free_udp_port(), free_udp_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", origin))
        taken.listen()
        result = subprocess.run(demo_argv(write_config(tmp_path, certs_dir), port, origin), capture_output=True, text=True, timeout=60)
    hint = one_line_with_hint(result)
    assert f"the demo origin cannot listen on tcp 127.0.0.1:{origin}: Address already in use" in result.stderr
    assert int(hint.group(1)) == port and int(hint.group(2)) != origin


@asynccontextmanager
async def demo(config: Path, port: int) -> AsyncIterator[tuple[trio.Process, Output]]:
    """The demo until it printed its banner: the Server has started, signal handlers
    included (a TCP connect would succeed earlier: the listener's backlog accepts before
    the server serves, and a SIGINT then is an immediate stop)."""
    proc = await trio.lowlevel.open_process(demo_argv(config, port, free_udp_port()), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    output, banner = Output(proc.stderr), Output(proc.stdout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        nursery.start_soon(banner.pump)
        try:
            with trio.fail_after(30):
                await banner.wait_for(rb"spooky-trio is serving HTTP/3")
            yield proc, output
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            nursery.cancel_scope.cancel()


async def test_ctrl_c_drains_and_a_second_one_stops_at_once_with_status_1(tmp_path: Path, certs_dir: Path) -> None:
    ca = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    async with run_backend() as backend:
        config = write_config(tmp_path, certs_dir, backend.url)
        port = free_udp_port()
        async with demo(config, port) as (proc, output):
            proc.send_signal(signal.SIGINT)  # nothing in flight: drains at once, exit 0
            with trio.fail_after(30):
                assert await proc.wait() == 0
        port = free_udp_port()
        async with demo(config, port) as (proc, output), httpx.AsyncClient(http2=True, verify=ca, timeout=30) as client:
            async def held() -> None:
                with pytest.raises(httpx.HTTPError):  # cut by the second Ctrl-C
                    await client.get(f"https://localhost:{port}/hold")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held)
                with trio.fail_after(10):
                    await backend.wait_for_requests(1)
                proc.send_signal(signal.SIGINT)
                with trio.fail_after(10):
                    await output.wait_for(rb"draining: 1 request\(s\) in flight")
                proc.send_signal(signal.SIGINT)
                with trio.fail_after(3):  # well before the 5 s drain deadline
                    assert await proc.wait() == 1
            assert b"stopping now" in output.data


async def concurrently(n: int, request: Callable[[], Awaitable[int]], backend: Backend) -> list[int]:
    """``n`` requests at once to ``/hold``: all must reach the origin before any is answered."""
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(await request())

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.fail_after(20):
            await backend.wait_for_requests(n)
        assert statuses == []  # none was shed meanwhile
        backend.release_holds()
    return statuses


@pytest.mark.parametrize("protocol", ["h2", "h3"])
async def test_dev_config_does_not_shed_100_concurrent_requests(certs_dir: Path, protocol: str) -> None:
    ca = str(certs_dir / "ca.pem")
    concurrent = 100  # h2load -c 10 -m 10; one HTTP/2 or HTTP/3 connection carries them all
    async with run_backend() as backend:
        port = free_udp_port()
        text = ((REPO / "conf" / "dev.yaml").read_text()
                .replace(".dev-certs/", f"{certs_dir}/").replace("port: 9889", f"port: {port}")
                .replace("http://127.0.0.1:8081", backend.url))
        # held requests wait for the slowest to arrive: no connect or response deadline under load
        timeouts = "".join(f"  {key}: 60000\n" for key in (
            "backend_connect_timeout_ms", "backend_timeout_ms", "backend_body_idle_timeout_ms",
            "backend_body_total_timeout_ms", "backend_total_request_timeout_ms"))
        if "\nperformance:\n" in text:
            text = text.replace("\nperformance:\n", "\nperformance:\n" + timeouts)
        else:
            text += "performance:\n" + timeouts
        async with running_proxy(text):
            if protocol == "h2":
                async with httpx.AsyncClient(http2=True, http1=False, verify=ssl.create_default_context(cafile=ca), timeout=30) as h2:
                    async def get() -> int:
                        return (await h2.get(f"https://localhost:{port}/hold")).status_code

                    statuses = await concurrently(concurrent, get, backend)
            else:
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as h3:
                    async def get() -> int:
                        return (await h3.request("GET", "/hold", authority="localhost")).status

                    statuses = await concurrently(concurrent, get, backend)
    assert statuses == [200] * concurrent, sorted(set(statuses))
