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

from spooky_trio.clients.h3 import H3Client
from spooky_trio.server import Server
from tests.integration.test_observability import TOKEN, observability_yaml, scrape
from tests.support.backends import Backend, run_backend
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
