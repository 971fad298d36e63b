"""The watchdog through the real proxy: requests held in flight past ``overload_inflight_percent``
make it drain readiness, then run a real ``restart_command`` (a Python process writing a file)."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

# the command asks the control API whether the server is ready while it runs: the drain
# must have turned readiness off before the command starts
PROBE = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    status = urllib.request.urlopen(sys.argv[2], timeout=5).status\n"
    "except urllib.error.HTTPError as exc:\n"
    "    status = exc.code\n"
    "open(sys.argv[1], 'w').write(f'restarted ready={status}')\n"
)


def _watchdog_yaml(marker: Path, control_port: int) -> str:
    argv = [sys.executable, "-c", PROBE, str(marker), f"http://127.0.0.1:{control_port}/ready"]
    return f"""
performance:
  global_inflight_limit: 4
resilience:
  adaptive_admission:
    enabled: false
    min_limit: 1
  watchdog:
    enabled: true
    check_interval_ms: 100
    overload_inflight_percent: 50
    unhealthy_consecutive_windows: 2
    drain_grace_ms: 100
    restart_cooldown_ms: 600000
    restart_command: {argv!r}
observability:
  control_api:
    enabled: true
    address: 127.0.0.1
    port: {control_port}
"""


async def test_overload_drains_then_runs_restart_command_once(certs_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "restarted"
    async with run_backend(name="app") as backend:
        config = proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=_watchdog_yaml(marker, free_udp_port()))
        async with running_proxy(config) as server:
            async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                statuses: list[int | None] = []

                async def held() -> None:
                    statuses.append((await c.request("POST", "/hold", body=b"x")).status)

                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        for _ in range(2):  # 2 of 4 in flight = 50%: every window is unhealthy
                            nursery.start_soon(held)
                        await backend.wait_for_requests(2)
                        await server.watchdog.wait_stat("restart_hooks", 1)
                        assert marker.read_text() == "restarted ready=503"
                        assert server.ready  # the process is still alive: ready again
                        # still overloaded, but the cooldown allows no second restart
                        suppressed = server.watchdog.stats["suppressed"]
                        await server.watchdog.wait_stat("suppressed", suppressed + 1)
                        backend.release_holds()
                assert statuses == [200, 200]
            text = server.metrics.render().decode()
            assert "spooky_watchdog_restart_hooks_total 1.0" in text
            assert "spooky_watchdog_restart_requests_total 1.0" in text
            assert server.watchdog.stats["restart_hooks"] == 1
