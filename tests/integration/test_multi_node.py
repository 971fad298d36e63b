"""The multi-node proof (docs/fleet.md): two proxy nodes (each a supervisor with 2 workers,
on 127.0.0.2 and 127.0.0.3) behind a test-only UDP balancer that routes by the QUIC-LB
server ID in the DCID (tests/support/udp_balancer.py).

- a client that moves mid-download (``gtlsclient --change-local-addr``, ``--nat-rebinding``)
  stays on its node and completes, though a 4-tuple hash would have sent some elsewhere;
  the same QUIC-LB config steers between the node's workers (one config, both levels);
- a node drained with SIGTERM finishes the requests it has, while the balancer (which sees
  its ``/ready`` go 503) sends every new connection to the other node.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from spooky_trio.ingress.quic_lb import QuicLbCodec
from tests.support.backends import run_backend
from tests.support.fleet import gtls_download, spooky_process
from tests.support.proxy import free_udp_port
from tests.support.tools import require
from tests.support.udp_balancer import Node, UdpBalancer

SERVER_IDS = (bytes.fromhex("0a0b"), bytes.fromhex("0c0d"))
NONCE_LENGTH = 6
ADDRESSES = ("127.0.0.2", "127.0.0.3")


def _node_config(tmp_path: Path, certs_dir: Path, index: int, port: int, cport: int, backend_url: str, key_file: Path) -> Path:
    path = tmp_path / f"node{index}.yaml"
    path.write_text(f"""\
listen:
  address: {ADDRESSES[index]}
  port: {port}
  tls: {{cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}
  quic_lb: {{config_id: 1, server_id: '0x{SERVER_IDS[index].hex()}', nonce_length: {NONCE_LENGTH}, key_file: {key_file}}}
upstream:
  app:
    route: {{path_prefix: /}}
    backends: [{{id: b, address: "{backend_url}"}}]
performance:
  worker_threads: 2
  shutdown_drain_timeout_ms: 10000
security: {{privileges: {{enabled: false}}}}
observability:
  control_api: {{enabled: true, required: true, address: {ADDRESSES[index]}, port: {cport}, auth_token: t}}
""")
    return path


async def _fetch_all(port: int, tmp_path: Path, name: str, path: str, count: int, *flags: str) -> list[str]:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(4)

    async def one(run: int) -> None:
        async with limiter:
            ok, tail = await gtls_download("127.0.0.1", port, path, tmp_path / f"{name}-{run}", *flags)
        if not ok:
            failures.append(f"{name} {run}: {tail}")

    async with trio.open_nursery() as nursery:
        for run in range(count):
            nursery.start_soon(one, run)
    return failures


async def test_two_nodes_behind_a_server_id_balancer(certs_dir: Path, tmp_path: Path) -> None:
    require("gtlsclient", "ngtcp2-client")
    key = os.urandom(16)
    key_file = tmp_path / "quic-lb.key"
    key_file.write_text(key.hex() + "\n")
    port, cports = free_udp_port(), (free_udp_port(), free_udp_port())
    async with AsyncExitStack() as stack:
        backends = [await stack.enter_async_context(run_backend(name=f"node{i}")) for i in (0, 1)]
        procs = []
        for i in (0, 1):
            config = _node_config(tmp_path, certs_dir, i, port, cports[i], backends[i].url, key_file)
            proc, _output = await stack.enter_async_context(spooky_process(config, b"all 2 workers serving"))
            procs.append(proc)
        nodes = [Node(SERVER_IDS[i], (ADDRESSES[i], port), f"http://{ADDRESSES[i]}:{cports[i]}/ready") for i in (0, 1)]
        decoder = QuicLbCodec(config_id=1, server_id=bytes(2), nonce_length=NONCE_LENGTH, key=key)
        balancer = UdpBalancer(nodes, decoder)
        vip = await balancer.bind()
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(balancer.run)

        # 1. clients that move mid-download stay on their node (routed by server ID)
        failures = await _fetch_all(vip, tmp_path, "move", "/bytes/300000", 10, "--change-local-addr=50ms", "--delay-stream=100ms")
        failures += await _fetch_all(vip, tmp_path, "nat", "/bytes/300000", 10, "--change-local-addr=50ms", "--nat-rebinding",
                                     "--delay-stream=100ms")
        assert not failures, "\n".join(failures[:5])
        assert all(len(b.requests) > 0 for b in backends), [len(b.requests) for b in backends]  # both nodes served
        # (moved: a short header from an address not seen before; the OS may reuse a port of an earlier run)
        assert balancer.stats["moved"] >= 10 and balancer.stats["hash_would_misroute"] > 0, balancer.stats

        # 2. drain node 0 with SIGTERM while it serves slow requests
        balancer.pin = SERVER_IDS[0]
        slow_done: list[bool] = []
        slow_tails: list[str] = []

        async def slow(run: int) -> None:
            ok, tail = await gtls_download("127.0.0.1", vip, "/slow/1500", tmp_path / f"slow-{run}")
            got = tmp_path / f"slow-{run}" / "1500"
            slow_done.append(ok and got.exists() and got.read_bytes() == b"slow ok")
            slow_tails.append(tail)

        async with trio.open_nursery() as clients:
            for run in range(3):
                clients.start_soon(slow, run)
            with trio.fail_after(10):
                while sum(r["path"].startswith("/slow") for r in backends[0].requests) < 3:
                    await trio.sleep(0.05)
            balancer.pin = None
            procs[0].send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                while nodes[0].ready:  # the balancer saw /ready answer 503
                    await trio.sleep(0.05)
            before = len(backends[1].requests)
            failures = await _fetch_all(vip, tmp_path, "after", "/echo", 6)
            assert not failures, "\n".join(failures[:5])
            served_by = [json.loads((tmp_path / f"after-{run}" / "echo").read_bytes())["backend"] for run in range(6)]
            assert served_by == ["node1"] * 6 and len(backends[1].requests) == before + 6
        assert slow_done == [True, True, True], slow_tails  # node 0 finished what it had
        with trio.fail_after(15):
            assert await procs[0].wait() == 0
        nursery.cancel_scope.cancel()
