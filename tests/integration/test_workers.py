"""``performance.worker_threads: 2``: the real supervisor and worker processes, real sockets.

Two workers share the UDP and TCP ports (SO_REUSEPORT); the supervisor serves the
configured metrics endpoint (the workers' metrics merged) and control API (readiness of
every worker, runtime of each, reloads forwarded), drains every worker on SIGTERM and
restarts a killed one.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.fleet import Output
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml

TOKEN = "workers-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def supervisor(config: Path) -> AsyncIterator[tuple[trio.Process, Output]]:
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    output = Output(proc.stderr)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        try:
            with trio.fail_after(30):
                await output.wait_for(b"all 2 workers serving")
            yield proc, output
        finally:
            if proc.returncode is None:
                proc.kill()  # the workers get SIGTERM from the kernel (parent death signal)
                await proc.wait()
            nursery.cancel_scope.cancel()


def write_config(tmp_path: Path, certs_dir: Path, backend_url: str, *, extra_perf: str = "") -> tuple[Path, int, int, int]:
    port, mport, cport = free_udp_port(), free_udp_port(), free_udp_port()
    config = tmp_path / "config.yaml"
    config.write_text(proxy_yaml(h1_pool(backend_url), certs_dir=certs_dir, port=port, extra=f"""
performance:
  worker_threads: 2
  shutdown_drain_timeout_ms: 8000
{extra_perf}observability:
  metrics:
    enabled: true
    required: true
    port: {mport}
  control_api:
    enabled: true
    required: true
    port: {cport}
    auth_token: "{TOKEN}"
"""))
    return config, port, mport, cport


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


async def test_two_workers_serve_h3_and_h2_merge_metrics_reload_and_drain(certs_dir: Path, tmp_path: Path) -> None:
    ca = str(certs_dir / "ca.pem")
    async with run_backend(name="w") as backend:
        config, port, mport, cport = write_config(tmp_path, certs_dir, backend.url)
        async with supervisor(config) as (proc, output), httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", timeout=20) as api:
            assert (await api.get("/ready")).status_code == 200
            assert (await api.get("/admin/runtime")).status_code == 401  # the token rules hold

            # many connections (new source ports): the kernel spreads them over both workers
            h3_count = h2_count = 16
            for _ in range(h3_count):
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as client:
                    assert (await client.request("GET", "/echo", authority="localhost")).status == 200
            for _ in range(h2_count):
                async with httpx.AsyncClient(http2=True, http1=False, verify=ssl.create_default_context(cafile=ca), timeout=10) as h2:
                    r = await h2.get(f"https://localhost:{port}/echo")
                    assert r.status_code == 200 and r.http_version == "HTTP/2"
            total = h3_count + h2_count

            runtime = (await api.get("/admin/runtime", headers=AUTH)).json()
            assert runtime["supervisor"]["worker_threads"] == 2 and runtime["ready"] is True
            workers = runtime["workers"]
            per_worker = [w["runtime"]["worker"]["requests"] for w in workers]
            assert {w["runtime"]["worker"]["index"] for w in workers} == {0, 1}
            assert all(n > 0 for n in per_worker), per_worker  # both workers took connections
            assert sum(per_worker) == total
            assert len({w["pid"] for w in workers}) == 2 and os.getpid() not in {w["pid"] for w in workers}

            async with httpx.AsyncClient(timeout=20) as http:
                text = (await http.get(f"http://127.0.0.1:{mport}/metrics")).text
            assert metric(text, "spooky_requests_total") == total  # summed over both workers
            assert metric(text, "spooky_workers") == 2 and metric(text, "spooky_workers_serving") == 2
            assert metric(text, "spooky_config_generation") == 1  # a gauge: not summed
            assert 'spooky_worker_restarts_total{reason="crash"} 0.0' in text
            types = re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)
            assert len(types) == len(set(types)), sorted(t for t in set(types) if types.count(t) > 1)  # one family per name

            # a reload reaches every worker; the answer lists each one's result
            r = await api.post("/admin/runtime/reload", headers=AUTH)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["result"] == "applied" and [w["generation"] for w in body["workers"]] == [2, 2]
            assert (await api.get("/admin/config", headers=AUTH)).json()["generation"] == 2
            bad = await api.post("/admin/config/apply", headers=AUTH, content=b"version: 1\nlisten: [\n")
            assert bad.status_code == 400 and [w["status"] for w in bad.json()["workers"]] == [400, 400]

            # SIGHUP to the supervisor: every worker reloads the file
            proc.send_signal(signal.SIGHUP)
            with trio.fail_after(20):
                await output.wait_for(rb"config generation 3 applied \(SIGHUP", 2)

            # SIGTERM: every worker drains; a request in flight completes; the supervisor exits 0
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as inflight:
                result: dict[str, int] = {}

                async def slow() -> None:
                    result["status"] = (await inflight.request("GET", "/slow/1500", authority="localhost")).status

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(slow)
                    with trio.fail_after(10):
                        await backend.wait_for_requests(total + 1)
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):
                        await output.wait_for(b"draining: ", 2)  # both workers drain
                    assert (await api.get("/ready")).status_code == 503
            assert result["status"] == 200
            with trio.fail_after(20):
                assert await proc.wait() == 0
            await output.wait_for(b"all workers stopped")
            assert len(re.findall(rb"worker \d \(pid \d+\) exited with status 0", output.data)) == 2


async def test_killed_worker_is_restarted_pinned_workers_and_supervisor_death(certs_dir: Path, tmp_path: Path) -> None:
    ca = str(certs_dir / "ca.pem")
    async with run_backend(name="w") as backend:
        config, port, mport, cport = write_config(tmp_path, certs_dir, backend.url, extra_perf="  pin_workers: true\n")
        async with supervisor(config) as (proc, output), httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", timeout=20) as api:
            runtime = (await api.get("/admin/runtime", headers=AUTH)).json()
            pids = [w["pid"] for w in runtime["workers"]]
            if len(os.sched_getaffinity(0)) >= 2:
                cpus = sorted(os.sched_getaffinity(0))
                for index, pid in enumerate(pids):
                    status = Path(f"/proc/{pid}/status").read_text()
                    allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.MULTILINE)
                    assert allowed and allowed.group(1) == str(cpus[index % len(cpus)])

            os.kill(pids[0], signal.SIGKILL)
            with trio.fail_after(20):
                await output.wait_for(rb"worker 0 \(pid \d+\) serving", 2)
            assert b"worker 0 (pid %d) exited with status -9; restarting it" % pids[0] in output.data
            assert (await api.get("/ready")).status_code == 200
            runtime = (await api.get("/admin/runtime", headers=AUTH)).json()
            first = runtime["workers"][0]
            assert first["restarts"] == 1 and first["pid"] not in pids and first["state"] == "serving"
            assert runtime["workers"][1]["pid"] == pids[1] and runtime["supervisor"]["restarts"] == 1
            async with httpx.AsyncClient(timeout=20) as http:
                text = (await http.get(f"http://127.0.0.1:{mport}/metrics")).text
            assert 'spooky_worker_restarts_total{reason="crash"} 1.0' in text
            assert metric(text, "spooky_workers_serving") == 2
            # serving again: new connections keep succeeding (on either worker)
            for _ in range(6):
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as client:
                    assert (await client.request("GET", "/echo", authority="localhost")).status == 200
            # the supervisor dies without a word: each worker sees its lifeline pipe close,
            # drains and exits (pidfds: readable once the process exited)
            workers = [first["pid"], pids[1]]
            pidfds = [os.pidfd_open(pid) for pid in workers]
            try:
                proc.kill()
                await proc.wait()
                with trio.fail_after(20):
                    for fd in pidfds:
                        await trio.lowlevel.wait_readable(fd)
            finally:
                for fd in pidfds:
                    os.close(fd)
            await output.wait_for(b"the supervisor is gone: draining", 2)


async def test_restart_path_drains_every_worker_and_exits_75(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="w") as backend:
        config, port, mport, cport = write_config(tmp_path, certs_dir, backend.url)
        async with supervisor(config) as (proc, output), httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", timeout=20) as api:
            assert (await api.post("/admin/runtime/restart")).status_code == 401
            r = await api.post("/admin/runtime/restart", headers=AUTH)
            assert r.status_code == 202
            with trio.fail_after(20):
                assert await proc.wait() == 75
            await output.wait_for(b"all workers stopped")
            assert len(re.findall(rb"worker \d \(pid \d+\) exited with status 0", output.data)) == 2


async def test_worker_that_cannot_bind_stops_the_supervisor(certs_dir: Path, tmp_path: Path) -> None:
    import socket

    async with run_backend(name="w") as backend:
        config, port, mport, cport = write_config(tmp_path, certs_dir, backend.url)
        # TCP: the supervisor binds the UDP sockets itself (worker steering), the workers bind TCP
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:  # no SO_REUSEPORT: nobody can share it
            squatter.bind(("127.0.0.1", port))
            proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                                    stderr=subprocess.PIPE)
            assert proc.stderr is not None
            output = Output(proc.stderr)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(output.pump)
                with trio.fail_after(30):
                    assert await proc.wait() == 1  # not a restart loop
                    await output.wait_for(b"spooky-trio: worker \\d exited with status 1 before serving")
            assert re.search(rb"spooky-trio worker \d: cannot bind TCP 127.0.0.1:%d" % port, output.data), bytes(output.data[-2000:])
            assert b"restarting it" not in output.data and b"Traceback" not in output.data
