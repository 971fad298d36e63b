"""Graceful drain of the real daemon process: SIGTERM lets in-flight work finish, refuses new
connections and exits 0 within the drain bound."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from spooky_trio.clients.h3 import H3Client, H3ConnectError
from tests.support.backends import run_backend, run_raw_backend
from tests.support.proxy import proxy_yaml


async def _wait_for_line(stream: trio.abc.ReceiveStream, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"process output ended before {needle!r}: {bytes(seen)!r}")
        seen.extend(chunk)


async def test_sigterm_drains_in_flight_and_refuses_new(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="slow") as backend:
        config = tmp_path / "config.yaml"
        config.write_text(
            proxy_yaml(
                f"""
                app:
                  route:
                    path_prefix: "/"
                  backends:
                    - id: "slow-1"
                      address: "{backend.url}"
                """,
                certs_dir=certs_dir,
                extra="""
performance:
  shutdown_drain_timeout_ms: 8000
  backend_timeout_ms: 5000
  backend_body_idle_timeout_ms: 5000
""",
            )
        )
        port = int(next(line.split(":")[1] for line in config.read_text().splitlines() if line.strip().startswith("port:")))
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        output = bytearray()
        try:
            with trio.fail_after(20):
                await _wait_for_line(proc.stderr, b"listening for HTTP/3", output)
            ca = str(certs_dir / "ca.pem")
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as inflight:
                result: dict[str, object] = {}

                async def slow_request() -> None:
                    r = await inflight.request("GET", "/slow/1500", authority="localhost")
                    result["status"] = r.status
                    result["done_at"] = trio.current_time()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(slow_request)
                    with trio.fail_after(10):
                        await backend.wait_for_requests(1)  # the slow request reached the backend
                    proc.send_signal(signal.SIGTERM)
                    signalled = trio.current_time()
                    with trio.fail_after(10):
                        await _wait_for_line(proc.stderr, b"draining", output)
                    with pytest.raises(H3ConnectError):
                        with trio.fail_after(10):
                            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, idle_timeout=5.0) as late:
                                await late.request("GET", "/echo", authority="localhost")
                assert result["status"] == 200
                assert inflight.goaway_received.is_set()
            with trio.fail_after(10):
                code = await proc.wait()
            assert code == 0, bytes(output).decode(errors="replace")
            assert trio.current_time() - signalled < 8.0 + 2.0
        finally:
            print("proxy output:", bytes(output).decode(errors="replace"))  # shown by pytest on failure
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_second_signal_cuts_the_drain_short(certs_dir: Path, tmp_path: Path) -> None:
    """A request the backend never answers would hold the drain for a minute; a second
    SIGTERM ends the process at once with the documented status 1."""
    arrived = trio.Event()

    async def never_answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        arrived.set()
        await trio.sleep_forever()

    async with run_raw_backend(never_answer) as backend:
        config = tmp_path / "config.yaml"
        config.write_text(
            proxy_yaml(
                f'app:\n  route: {{path_prefix: "/"}}\n  backends: [{{id: a, address: "http://127.0.0.1:{backend.port}"}}]\n',
                certs_dir=certs_dir,
                extra="performance:\n  shutdown_drain_timeout_ms: 60000\n  backend_timeout_ms: 60000\n  backend_body_idle_timeout_ms: 60000\n"
                "  backend_body_total_timeout_ms: 60000\n  backend_total_request_timeout_ms: 60000\n",
            )
        )
        port = int(next(line.split(":")[1] for line in config.read_text().splitlines() if line.strip().startswith("port:")))
        proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)], stderr=subprocess.PIPE)
        assert proc.stderr is not None
        output = bytearray()
        try:
            with trio.fail_after(20):
                await _wait_for_line(proc.stderr, b"listening for HTTP/3", output)
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                async with trio.open_nursery() as nursery:

                    async def hung_request() -> None:
                        with trio.move_on_after(30):
                            try:
                                await c.request("GET", "/hang", authority="localhost")
                            except H3ConnectError:
                                pass  # the process is gone: that is the point

                    nursery.start_soon(hung_request)
                    with trio.fail_after(10):
                        await arrived.wait()
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):
                        await _wait_for_line(proc.stderr, b"draining: 1 request", output)
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(5):
                        code = await proc.wait()
                    nursery.cancel_scope.cancel()
            assert code == 1, bytes(output).decode(errors="replace")
        finally:
            print("proxy output:", bytes(output).decode(errors="replace"))  # shown by pytest on failure
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
