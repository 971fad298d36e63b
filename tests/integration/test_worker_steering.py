"""Worker steering (ingress/steering.py): a client that moves to a new address mid-connection
(ngtcp2's ``gtlsclient --change-local-addr``, and ``--nat-rebinding``) completes its download
through 2 and 4 worker processes, 20 runs of each, in both steering modes. Before, the
kernel's 4-tuple hash sent the moved client's packets to a worker that had never heard of
the connection (``ERR_IDLE_CLOSE`` every time with 2 workers).

The kernel mode must be the one that did the work (nothing handed over, packets steered);
the hand-over mode must have handed packets over."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.ingress.steering import attach_cbpf
from tests.support.backends import run_backend
from tests.support.fleet import gtls_download, metric, spooky_process
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml
from tests.support.tools import require

RUNS = 20
#: downloads at once (the machine has 2 cores)
PARALLEL = 4


def kernel_steering_available() -> bool:
    """Whether this kernel lets an unprivileged process attach the reuseport CBPF program."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        return attach_cbpf(sock, 0, 0xFF) is None


def _config(tmp_path: Path, certs_dir: Path, backend_url: str, workers: int, steering: str) -> tuple[Path, int, int]:
    port, mport, cport = free_udp_port(), free_udp_port(), free_udp_port()
    config = tmp_path / "config.yaml"
    config.write_text(proxy_yaml(h1_pool(backend_url), certs_dir=certs_dir, port=port, extra=f"""
performance:
  worker_threads: {workers}
  quic_worker_steering: {steering}
observability:
  metrics: {{enabled: true, required: true, port: {mport}}}
  control_api: {{enabled: true, required: true, port: {cport}, auth_token: t}}
"""))
    return config, port, mport, cport


async def _downloads(port: int, tmp_path: Path, flags: tuple[str, ...]) -> list[str]:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(PARALLEL)

    async def one(run: int) -> None:
        async with limiter:
            ok, tail = await gtls_download("127.0.0.1", port, "/bytes/300000", tmp_path / f"dl-{'-'.join(flags)}-{run}", *flags)
        if not ok:
            failures.append(f"run {run} {flags}: {tail}")

    async with trio.open_nursery() as nursery:
        for run in range(RUNS):
            nursery.start_soon(one, run)
    return failures


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("steering", ["auto", "handover"])
async def test_migrating_clients_complete_through_workers(certs_dir: Path, tmp_path: Path, workers: int, steering: str) -> None:
    require("gtlsclient", "ngtcp2-client")
    async with run_backend(name="w") as backend:
        config, port, mport, cport = _config(tmp_path, certs_dir, backend.url, workers, steering)
        async with spooky_process(config, b"all %d workers serving" % workers):
            failures = []
            # --delay-stream: the request leaves after the move, so the whole download follows it
            for flags in (("--change-local-addr=50ms", "--delay-stream=100ms"),
                          ("--change-local-addr=50ms", "--nat-rebinding", "--delay-stream=100ms")):
                failures += await _downloads(port, tmp_path, flags)
            assert not failures, f"{len(failures)} of {2 * RUNS} downloads failed:\n" + "\n".join(failures[:5])
            async with httpx.AsyncClient(timeout=10) as client:
                text = (await client.get(f"http://127.0.0.1:{mport}/metrics")).text
                runtime = (await client.get(f"http://127.0.0.1:{cport}/admin/runtime", headers={"authorization": "Bearer t"})).json()
    expected = "kernel" if steering == "auto" and kernel_steering_available() else "handover"
    described = [w["runtime"]["listeners"][0]["quic_steering"] for w in runtime["workers"]]
    assert sorted(d["worker"] for d in described) == list(range(workers))  # type: ignore[index]
    assert {(d["mode"], d["workers"]) for d in described} == {(expected, workers)}, described
    listener = f'listener="127.0.0.1:{port}"'
    assert metric(text, "spooky_quic_steering_mode", f'{listener},mode="{expected}"') == workers  # one per worker
    steered = metric(text, "spooky_quic_steering_packets_total", 'path="steered"')
    handed = metric(text, "spooky_quic_steering_packets_total", 'path="handed_over"')
    received = metric(text, "spooky_quic_steering_packets_total", 'path="handover_received"')
    if expected == "kernel":  # (a Handshake packet resent on the new path goes by the hash: rare)
        assert steered > 0 and handed * 20 < steered, (steered, handed)
    else:  # with 40 moves over 2+ workers, some moved 4-tuples hashed to another worker
        assert handed > 0 and received == handed, (handed, received)


async def test_the_supervisor_reports_a_udp_port_it_cannot_bind(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="w") as backend:
        config, port, _, _ = _config(tmp_path, certs_dir, backend.url, 2, "auto")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:  # no SO_REUSEPORT: nobody can share it
            squatter.bind(("127.0.0.1", port))
            with trio.fail_after(30):
                result = await trio.run_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                                capture_stderr=True, check=False)
    assert result.returncode == 1
    assert f"cannot bind UDP 127.0.0.1:{port}".encode() in result.stderr and b"Traceback" not in result.stderr
