"""Configuration hot reload through the real proxy: each trigger, failures, history, canary,
listeners, endpoints and health continuity (docs/reload.md)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.integration.test_observability import TOKEN, observability_yaml, scrape
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy

AUTH = {"authorization": f"Bearer {TOKEN}"}


def pool(name: str, prefix: str, backends: list[tuple[str, str]], *, lb: str = "round-robin", extra: str = "") -> str:
    lines = [f"{name}:", "  route:", f'    path_prefix: "{prefix}"', "  load_balancing:", f"    type: {lb}", "  backends:"]
    for backend_id, url in backends:
        lines += [f"    - id: {backend_id}", f'      address: "{url}"']
        if extra:
            lines += ["      " + line for line in extra.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def config(certs_dir: Path, port: int, cport: int, mport: int, pools: str, extra: str = "") -> str:
    return proxy_yaml(pools, certs_dir=certs_dir, port=port, extra=observability_yaml(mport, cport) + extra)


def h3(port: int, certs_dir: Path) -> Any:
    return H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


def tls_client(certs_dir: Path, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(certs_dir / "ca.pem")), timeout=10, **kwargs)


async def who(client: H3Client, path: str = "/a/echo") -> str:
    r = await client.request("GET", path, authority="localhost")
    assert r.status == 200, (r.status, r.body)
    return json.loads(r.body)["backend"]


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_udp_port(), free_udp_port(), free_udp_port()


async def test_reload_path_rereads_the_file(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2:
        first = config(certs_dir, port, cport, mport, pool("app", "/a", [("b1", b1.url)]))
        second = config(certs_dir, port, cport, mport, pool("app", "/a", [("b2", b2.url)]))
        async with running_proxy(first, config_path=path) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            assert await who(client) == "b1"
            doc = (await api.get("/admin/config")).json()
            assert doc["generation"] == 1 and doc["source"] == "startup" and doc["path"] == str(path)
            assert doc["sha256"] == hashlib.sha256(first.encode()).hexdigest()
            path.write_text(second)
            r = await api.post("/admin/runtime/reload")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["generation"] == 2 and body["source"] == "file" and body["trigger"] == "reload_path"
            assert body["diff"]["backends"] == {"added": [f"app/b2@{b2.url}"], "removed": [f"app/b1@{b1.url}"], "changed": []}
            assert server.generation.number == 2
            assert await who(client) == "b2"  # same QUIC connection, new generation
            doc = (await api.get("/admin/config")).json()
            assert doc["generation"] == 2 and doc["sha256"] == hashlib.sha256(second.encode()).hexdigest()
            assert [entry["generation"] for entry in doc["history"]] == [1]
            _, samples = await scrape(mport)
            assert samples[("spooky_config_generation", ())] == 2
            assert samples[("spooky_config_reload_total", (("result", "success"),))] == 1
            assert (await api.get("/admin/runtime/reload")).status_code == 405
            assert (await httpx.AsyncClient().post(f"http://127.0.0.1:{cport}/admin/config/apply")).status_code == 401


async def test_invalid_config_via_each_trigger(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="b1") as b1:
        good = config(certs_dir, port, cport, mport, pool("app", "/a", [("b1", b1.url)]))
        # two rule violations on known lines: weight out of range, unknown balancer
        address_line = next(line for line in good.splitlines() if "address: \"http" in line)
        indent = address_line[: len(address_line) - len(address_line.lstrip())]
        bad = good.replace("type: round-robin", "type: fastest").replace(address_line, f"{address_line}\n{indent}weight: -5")
        bad_lines = bad.splitlines()
        weight_line = next(i for i, line in enumerate(bad_lines, 1) if "weight: -5" in line)
        async with running_proxy(good, config_path=path) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            # apply: every error, with key path and line
            r = await api.post("/admin/config/apply", content=bad)
            assert r.status_code == 422, r.text
            errors = r.json()["errors"]
            paths = {e["path"] for e in errors}
            assert "upstream.app.backends[0].weight" in paths and "upstream.app.load_balancing.type" in paths
            assert next(e for e in errors if e["path"].endswith("weight"))["line"] == weight_line
            # not YAML at all: 400
            r = await api.post("/admin/config/apply", content=b"upstream: [unclosed\n")
            assert r.status_code == 400 and r.json()["errors"][0]["line"] is not None
            r = await api.post("/admin/config/apply", content=b"\xff\xfe")
            assert r.status_code == 400
            # a file that names a missing certificate: check_files runs too
            r = await api.post("/admin/config/apply", content=good.replace("localhost.key", "missing.key"))
            assert r.status_code == 422 and r.json()["errors"][0]["path"] == "listen.tls.key"
            # reload_path re-reading a bad file
            path.write_text(bad)
            r = await api.post("/admin/runtime/reload")
            assert r.status_code == 422 and len(r.json()["errors"]) == 2
            # validate: the same errors, nothing applied
            r = await api.post("/admin/config/validate", content=bad)
            assert r.status_code == 422 and len(r.json()["errors"]) == 2
            assert server.generation.number == 1 and await who(client) == "b1"
            _, samples = await scrape(mport)
            assert samples[("spooky_config_reload_total", (("result", "invalid"),))] == 5
            assert samples[("spooky_config_reload_total", (("result", "success"),))] == 0
            assert (await api.get("/admin/config")).json()["history"] == []


async def test_sighup_reloads_and_survives_a_bad_file(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2:
        first = config(certs_dir, port, cport, mport, pool("app", "/a", [("b1", b1.url)]))
        path.write_text(first)
        from spooky_trio.config import load_config_text

        server = Server(load_config_text(first), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: server.run(handle_signals=True, task_status=task_status))
            try:
                async with h3(port, certs_dir) as client:
                    path.write_text("upstream: {app: {route: {path_prefix: /a}, backends: []}}\n")
                    os.kill(os.getpid(), signal.SIGHUP)
                    with trio.fail_after(10):
                        await server.reloads.wait_transactions(1)
                    assert server.generation.number == 1 and await who(client) == "b1"
                    path.write_text(first.replace(b1.url, b2.url).replace("id: b1", "id: b2"))
                    os.kill(os.getpid(), signal.SIGHUP)
                    with trio.fail_after(10):
                        await server.reloads.wait_transactions(2)
                    assert server.generation.number == 2 and await who(client) == "b2"
                    assert server.reloads.current.trigger == "SIGHUP"
            finally:
                server.request_drain()
                with trio.fail_after(10):
                    await server.stopped.wait()


async def test_apply_persist_validate_rollback_and_serialized(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2, run_backend(name="b3") as b3:
        first = config(certs_dir, port, cport, mport, pool("app", "/a", [("b1", b1.url)]))
        second = config(certs_dir, port, cport, mport, pool("app", "/a", [("b2", b2.url)]) + pool("other", "/b", [("b3", b3.url)]))
        async with running_proxy(first, config_path=path) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            r = await api.post("/admin/config/validate", content=second)
            assert r.status_code == 200
            diff = r.json()["diff"]
            assert diff["pools"] == {"added": ["other"], "removed": [], "changed": ["app"]}
            assert diff["routes"]["added"] == ["other: path_prefix=/b"]
            assert server.generation.number == 1 and path.read_text() == first
            # apply without persist: the file stays, a later file reload would undo it
            r = await api.post("/admin/config/apply", content=second)
            assert r.status_code == 200 and r.json()["persisted"] is False
            assert path.read_text() == first
            assert await who(client) == "b2" and await who(client, "/b/echo") == "b3"
            # rollback to generation 1
            r = await api.post("/admin/config/rollback")
            assert r.status_code == 200, r.text
            assert r.json()["generation"] == 1 and r.json()["replaced"]["generation"] == 2
            assert await who(client) == "b1"
            r = await client.request("GET", "/b/echo", authority="localhost")
            assert r.status == 404
            assert (await api.post("/admin/config/rollback")).status_code == 409  # history is empty again
            # persist: written atomically, and what reload_path re-reads
            r = await api.post("/admin/config/apply?persist=true", content=second)
            assert r.status_code == 200 and r.json()["generation"] == 3 and r.json()["persisted"] is True
            assert path.read_text() == second
            assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # no temp file left
            # concurrent reloads are serialized: each gets its own generation
            results: list[int] = []

            async def reload_once() -> None:
                response = await api.post("/admin/runtime/reload")
                assert response.status_code == 200
                results.append(response.json()["generation"])

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(reload_once)
            assert sorted(results) == [4, 5, 6] and server.generation.number == 6
            doc = (await api.get("/admin/config")).json()
            assert [h["generation"] for h in doc["history"]] == [5, 4, 3, 1]
            assert await who(client) == "b2"


async def test_canary_promote_and_rollback(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2:
        first = config(certs_dir, port, cport, mport, pool("app", "/a", [("b1", b1.url)]))
        second = config(certs_dir, port, cport, mport, pool("app", "/a", [("b2", b2.url)]))
        async with running_proxy(first) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            server._rng = random.Random(7)
            assert (await api.post("/admin/config/apply?canary_percent=150", content=second)).status_code == 400
            r = await api.post("/admin/config/apply?canary_percent=30", content=second)
            assert r.status_code == 200, r.text
            assert r.json()["canary_percent"] == 30
            seen = [await who(client) for _ in range(60)]
            assert 5 <= seen.count("b2") <= 35 and "b1" in seen  # about 30 % (seeded)
            doc = (await api.get("/admin/config")).json()
            assert doc["generation"] == 1 and doc["canary"]["generation"] == 2 and doc["canary"]["percent"] == 30
            # while a canary runs, other reloads are refused
            assert (await api.post("/admin/config/apply", content=second)).status_code == 409
            # a canary cannot move listeners
            moved = second.replace(f"port: {port}", f"port: {free_udp_port()}", 1)
            r = await api.post("/admin/config/apply?canary_percent=10", content=moved)
            assert r.status_code == 409
            # rollback drops the canary
            r = await api.post("/admin/config/rollback")
            assert r.status_code == 200 and r.json()["result"] == "canary rolled back"
            assert {await who(client) for _ in range(20)} == {"b1"}
            # canary again, then promote: everything on the new generation
            r = await api.post("/admin/config/apply?canary_percent=50", content=second)
            assert r.status_code == 200 and r.json()["generation"] == 3
            r = await api.post("/admin/config/promote")
            assert r.status_code == 200 and r.json()["generation"] == 3
            assert {await who(client) for _ in range(20)} == {"b2"}
            assert (await api.post("/admin/config/promote")).status_code == 409
            doc = (await api.get("/admin/config")).json()
            assert doc["canary"] is None and doc["trigger"] == "promote" and doc["history"][0]["generation"] == 1
            # and the canary's listener rule, without another canary in the way
            r = await api.post("/admin/config/apply?canary_percent=10", content=moved)
            assert r.status_code == 422 and r.json()["errors"][0]["path"] == "listeners"


def listeners_config(certs_dir: Path, listen_ports: list[int], cport: int, mport: int, pools: str, extra: str = "") -> str:
    block = "listeners:\n" + "".join(
        f"  - address: 127.0.0.1\n    port: {p}\n    tls:\n      cert: {certs_dir / 'localhost.pem'}\n      key: {certs_dir / 'localhost.key'}\n"
        for p in listen_ports
    )
    indented = "".join("  " + line + "\n" for line in pools.splitlines())
    return (f"version: 1\n{block}upstream:\n{indented}security:\n  privileges:\n    enabled: false\n"
            + observability_yaml(mport, cport) + extra)


async def tcp_refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_listeners_added_removed_and_readdressed_live(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    p1, cport, mport = ports
    p2, p3 = free_udp_port(), free_udp_port()
    async with run_backend(name="b1") as b1:
        pools = pool("app", "/a", [("b1", b1.url)])

        def cfg(*listen: int) -> str:
            return listeners_config(certs_dir, list(listen), cport, mport, pools)

        async with running_proxy(cfg(p1)) as server, h3(p1, certs_dir) as c1, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api, tls_client(certs_dir) as https:
            assert await who(c1) == "b1"
            # add p2: bound before the swap, serving HTTP/3 and the TCP bootstrap
            r = await api.post("/admin/config/apply", content=cfg(p1, p2))
            assert r.status_code == 200 and r.json()["diff"]["listeners"]["added"] == [f"127.0.0.1:{p2}"]
            assert [q.port for q in server.listeners] == [p1, p2]
            async with h3(p2, certs_dir) as c2:
                assert await who(c2) == "b1"
            assert (await https.get(f"https://localhost:{p2}/a/echo")).json()["backend"] == "b1"
            # a listener that cannot bind fails the whole transaction, nothing changes
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
                await taken.bind(("127.0.0.1", 0))
                busy = taken.getsockname()[1]
                r = await api.post("/admin/config/apply", content=cfg(p1, busy))
            assert r.status_code == 422, r.text
            error = r.json()["errors"][0]
            assert error["path"] == "listeners[1].port" and "cannot bind UDP" in error["message"] and error["line"]
            assert server.generation.number == 2 and [q.port for q in server.listeners] == [p1, p2]
            # remove p1 while a request on it is in flight: it finishes, then p1 closes
            old = server._pairs[0]
            status: list[int] = []

            async def held() -> None:
                response = await c1.request("GET", "/a/hold", authority="localhost")
                status.append(response.status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held)
                with trio.fail_after(10):
                    await b1.wait_for_requests(len(b1.requests) + 1)
                r = await api.post("/admin/config/apply", content=cfg(p2))
                assert r.status_code == 200 and r.json()["diff"]["listeners"]["removed"] == [f"127.0.0.1:{p1}"]
                assert old.quic.draining  # refuses new connections, GOAWAY sent
                b1.release_holds()
            assert status == [200]
            with trio.fail_after(10):
                await old.done.wait()
            assert old.quic.sock.fileno() == -1 and await tcp_refused(p1)
            # re-address p2 -> p3
            keep = server._pairs[0]
            r = await api.post("/admin/config/apply", content=cfg(p3))
            assert r.status_code == 200
            async with h3(p3, certs_dir) as c3:
                assert await who(c3) == "b1"
            with trio.fail_after(10):
                await keep.done.wait()
            assert await tcp_refused(p2)
            doc = (await api.get("/admin/runtime")).json()
            assert [entry["port"] for entry in doc["listeners"]] == [p3]


async def test_control_api_and_metrics_move_after_answering(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    cport2, mport2 = free_udp_port(), free_udp_port()
    async with run_backend(name="b1") as b1:
        pools = pool("app", "/a", [("b1", b1.url)])
        first = config(certs_dir, port, cport, mport, pools)
        moved = config(certs_dir, port, cport2, mport2, pools)
        async with running_proxy(first) as server:
            old_control, old_metrics = server._services["control"], server._services["metrics"]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
                r = await api.post("/admin/config/apply", content=moved)
                assert r.status_code == 200, r.text  # answered on the old socket
            with trio.fail_after(10):
                await old_control.stopped.wait()
                await old_metrics.stopped.wait()
            assert await tcp_refused(cport) and await tcp_refused(mport)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport2}", headers=AUTH) as api:
                assert (await api.get("/admin/config")).json()["generation"] == 2
                # the token changes in place when the socket stays
                r = await api.post("/admin/config/apply", content=moved.replace(TOKEN, "new-token"))
                assert r.status_code == 200
                assert (await api.get("/admin/config")).status_code == 403
                assert (await api.get("/admin/config", headers={"authorization": "Bearer new-token"})).status_code == 200
            _, samples = await scrape(mport2)
            assert samples[("spooky_config_generation", ())] == 3


async def test_log_level_format_and_file_reload(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    log_file = tmp_path / "spooky.log"
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        async with run_backend(name="b1") as b1:
            pools = pool("app", "/a", [("b1", b1.url)])
            first = config(certs_dir, port, cport, mport, pools)
            logged = config(certs_dir, port, cport, mport, pools,
                            extra=f"log:\n  level: debug\n  format: json\n  file:\n    enabled: true\n    path: {log_file}\n")
            async with running_proxy(first), httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
                bad = logged.replace(str(log_file), str(tmp_path / "no-such-dir" / "x.log"))
                r = await api.post("/admin/config/apply", content=bad)
                assert r.status_code == 422 and r.json()["errors"][0]["path"] == "log.file.path"
                r = await api.post("/admin/config/apply", content=logged)
                assert r.status_code == 200
                assert root.level == logging.DEBUG
                r = await api.post("/admin/config/apply", content=logged.replace("level: debug", "level: warn"))
                assert r.status_code == 200 and root.level == logging.WARNING
                r = await api.post("/admin/config/apply", content=logged.replace("level: debug", "level: info"))
                assert r.status_code == 200
            lines = [json.loads(line) for line in log_file.read_text().splitlines()]
            applied = [entry for entry in lines if entry["logger"] == "spooky.reload"]
            # the line of generation 2 already went to the new file; 3 (warn) logged nothing at info
            assert [entry["msg"].split(" applied")[0] for entry in applied] == ["config generation 2", "config generation 4"]
            assert "log" in applied[0]["msg"]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in saved[0]:
                handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


async def test_unchanged_backends_keep_health_probes_latency_and_connections(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    check = "health_check: {interval: 50, timeout_ms: 1000, failure_threshold: 1, success_threshold: 1, cooldown_ms: 100}"
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2, run_backend(name="b3") as b3, run_backend(name="b4") as b4:
        first = config(certs_dir, port, cport, mport,
                       f"app:\n  route: {{path_prefix: /a}}\n  backends:\n    - {{id: b1, address: \"{b1.url}\", {check[:-1]}}}}}\n"
                       f"    - {{id: b2, address: \"{b2.url}\"}}\n" + pool("other", "/b", [("b3", b3.url)]))
        second = config(certs_dir, port, cport, mport,
                        f"app:\n  route: {{path_prefix: /a}}\n  load_balancing: {{type: round-robin}}\n  backends:\n"
                        f"    - {{id: b1, address: \"{b1.url}\", {check[:-1]}}}}}\n    - {{id: b2, address: \"{b2.url}\", weight: 50}}\n"
                        f"    - {{id: b4, address: \"{b4.url}\", {check[:-1]}}}}}\n")
        async with running_proxy(first) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            backends = {b.id: b for b in server.generation.backends()}
            s1, s2 = backends["b1"].state, backends["b2"].state
            b1.health_status = 500
            with trio.fail_after(10):
                await server.state.wait_for(lambda: not s1.healthy)
            assert {await who(client) for _ in range(4)} == {"b2"}
            assert await who(client, "/b/echo") == "b3"
            probe_key = ("health", backends["b1"].key)
            probe_scope = server.health._tasks[probe_key][1]
            latency = s2.latency
            assert latency is not None
            b2_clients = {tuple(r["client"]) for r in b2.requests}
            b2_before = len(b2.requests)
            r = await api.post("/admin/config/apply", content=second)
            assert r.status_code == 200, r.text
            diff = r.json()["diff"]
            assert diff["backends"]["added"] == [f"app/b4@{b4.url}"] and diff["backends"]["removed"] == [f"other/b3@{b3.url}"]
            assert diff["backends"]["changed"] == [f"app/b2@{b2.url}"]  # weight only: same identity, same state
            after = {b.id: b for b in server.generation.backends()}
            # same long-lived state objects, verdict and latency kept; the prober was not restarted
            assert after["b1"].state is s1 and after["b2"].state is s2 and not s1.healthy and s2.latency == latency
            assert server.health._tasks[probe_key][1] is probe_scope
            assert ("health", after["b4"].key) in server.health._tasks
            assert not any(key[1][0] == "other" for key in server.health._tasks)
            # the removed backend's pooled connection is closed; b2's is reused
            assert server.upstream.idle_h1_connections(backends["b3"].target) == 0
            seen = [await who(client) for _ in range(20)]
            assert set(seen) <= {"b2", "b4"} and "b2" in seen
            # a connection pooled before the reload served b2's first request after it
            assert tuple(b2.requests[b2_before]["client"]) in b2_clients
            r = await client.request("GET", "/b/echo", authority="localhost")
            assert r.status == 404  # the route moved away with its pool
            # the kept prober goes on probing: b1 recovers without a gap
            b1.health_status = 200
            with trio.fail_after(10):
                await server.state.wait_for(lambda: s1.healthy)


async def test_removed_http2_backend_connection_goes_away_kept_one_stays(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    port, cport, mport = ports
    tls = {"tls": True, "certfile": certs_dir / "localhost.pem", "keyfile": certs_dir / "localhost.key"}
    async with run_backend(name="h2a", **tls) as a, run_backend(name="h2b", **tls) as b:
        def h2(name: str, prefix: str, url: str) -> str:
            return (f"{name}:\n  route: {{path_prefix: {prefix}}}\n  tls: {{ca_file: \"{certs_dir / 'ca.pem'}\"}}\n"
                    f"  backends:\n    - {{id: {name}, address: \"{url}\"}}\n")

        both = config(certs_dir, port, cport, mport, h2("pa", "/a", a.url) + h2("pb", "/b", b.url))
        only_a = config(certs_dir, port, cport, mport, h2("pa", "/a", a.url))
        async with running_proxy(both) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            assert await who(client) == "h2a" and await who(client, "/b/echo") == "h2b"
            targets = {backend.id: backend.target for backend in server.generation.backends()}
            [conn_a] = server.upstream.h2_connections(targets["pa"])
            [conn_b] = server.upstream.h2_connections(targets["pb"])
            r = await api.post("/admin/config/apply", content=only_a)
            assert r.status_code == 200
            assert not conn_b.can_open_stream  # GOAWAY: closes once its streams are released
            assert conn_a.can_open_stream
            assert await who(client) == "h2a"
            assert server.upstream.h2_connections(targets["pa"]) == [conn_a]  # the same connection served it


async def test_kept_listener_adopts_flood_guard_and_0rtt_settings(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    """A reload that keeps a listener applies its new connection-flood limits and 0-RTT
    switch to it; Retry tokens handed out before stay valid (the token key is kept)."""
    port, cport, mport = ports
    async with run_backend(name="b1") as b1:
        pools = pool("app", "/a", [("b1", b1.url)])
        first = config(certs_dir, port, cport, mport, pools)
        second = config(certs_dir, port, cport, mport, pools, extra=(
            "performance:\n  new_connections_per_sec: 7\n  new_connections_burst: 9\n  max_active_connections: 11\n"
            "resilience:\n  protocol:\n    allow_0rtt: true\n"))
        async with running_proxy(first) as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            quic = server.listeners[0]
            guard, tokens = quic.guard, quic.guard._tokens
            assert quic.session_tickets == {}
            r = await api.post("/admin/config/apply", content=second)
            assert r.status_code == 200, r.text
            assert server.listeners[0] is quic and quic.guard is guard and quic.guard._tokens is tokens
            assert quic.guard.max_active == 11 and quic.guard.bucket.burst == 9
            assert set(quic.session_tickets) == {"session_ticket_fetcher", "session_ticket_handler"}
            async with h3(port, certs_dir) as client:
                assert await who(client) == "b1"


async def test_watchdog_follows_reloads(certs_dir: Path, ports: tuple[int, int, int]) -> None:
    """resilience.watchdog is reloadable: enabling starts it, a change retunes the running
    one, disabling stops it."""
    port, cport, mport = ports
    async with run_backend(name="b1") as b1:
        pools = pool("app", "/a", [("b1", b1.url)])
        plain = config(certs_dir, port, cport, mport, pools)
        watched = config(certs_dir, port, cport, mport, pools, extra=(
            "resilience:\n  watchdog:\n    enabled: true\n    check_interval_ms: 5000\n"))
        retuned = watched.replace("check_interval_ms: 5000", "check_interval_ms: 7000")
        async with running_proxy(plain) as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            assert server.watchdog is None
            assert (await api.post("/admin/config/apply", content=watched)).status_code == 200
            first = server.watchdog
            assert first is not None and first.config.check_interval_ms == 5000
            assert (await api.post("/admin/config/apply", content=retuned)).status_code == 200
            assert server.watchdog is first and first.config.check_interval_ms == 7000
            assert (await api.post("/admin/config/apply", content=plain)).status_code == 200
            assert server.watchdog is None


async def test_canary_does_not_retune_health_checks_of_stable_backends(certs_dir: Path) -> None:
    """A 1 % canary that changes a shared backend's health_check leaves the stable settings
    in force (found in review: it retuned the shared state for 100 % of traffic); promote
    applies them."""
    def pools(threshold: int) -> str:
        return ("app:\n  route: {path_prefix: /}\n  backends:\n"
                f'    - {{id: a, address: "http://127.0.0.1:9", health_check: {{interval: 3600000, failure_threshold: {threshold}, success_threshold: 1}}}}\n')

    async with running_proxy(proxy_yaml(pools(5), certs_dir=certs_dir)) as server:
        state = server.generation.pools["app"].backends[0].state
        canary = proxy_yaml(pools(1000), certs_dir=certs_dir, port=server.listeners[0].port).encode()
        assert (await server.reloads.apply(canary, persist=False, canary_percent=1.0)).status == 200
        assert state.active.failure_threshold == 5
        assert (await server.reloads.rollback()).status == 200
        assert state.active.failure_threshold == 5
        assert (await server.reloads.apply(canary, persist=False, canary_percent=1.0)).status == 200
        assert (await server.reloads.promote()).status == 200
        assert server.generation.pools["app"].backends[0].state is state and state.active.failure_threshold == 1000


async def test_a_ca_file_rewritten_in_place_is_trusted_after_a_reload(certs_dir: Path, tmp_path: Path, ports: tuple[int, int, int]) -> None:
    """Backend TLS contexts are built per generation from the CA file's content (upstream/tls.py
    ClientContexts): same path, same config text, new CA bytes -> the reload trusts the new CA."""
    port, cport, mport = ports
    other = trustme.CA()
    leaf = other.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "backend.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "backend.pem"))
    trusted = tmp_path / "upstream-ca.pem"
    trusted.write_bytes((certs_dir / "ca.pem").read_bytes())  # not the backend's CA yet
    path = tmp_path / "spooky.yaml"
    tls = {"tls": True, "certfile": tmp_path / "backend.pem", "keyfile": tmp_path / "backend.key"}
    async with run_backend(name="h2", **tls) as backend:
        text = config(certs_dir, port, cport, mport,
                      f"app:\n  route: {{path_prefix: /a}}\n  tls: {{ca_file: \"{trusted}\"}}\n"
                      f"  backends:\n    - {{id: h2, address: \"{backend.url}\"}}\n")
        async with running_proxy(text, config_path=path) as server, h3(port, certs_dir) as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers=AUTH) as api:
            refused = await client.request("GET", "/a/echo", authority="localhost")
            assert refused.status == 502 and b"tls_failed" in refused.body
            other.cert_pem.write_to_path(str(trusted))  # rewritten in place; config unchanged
            r = await api.post("/admin/runtime/reload")
            assert r.status_code == 200, r.text
            assert server.generation.number == 2
            assert await who(client) == "h2"
