"""The backend admin API through the real control API: ``PUT``/``DELETE
/admin/upstreams/{pool}/backends/{id}`` with and without the token, checked like config
backends, used by requests over HTTP/3, HTTP/2 and HTTP/1.1 once answered, shown in
``/admin/runtime``, kept by a reload that keeps the pool and dropped with it, never
written to the config file."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx

from tests.integration.test_observability import TOKEN, observability_yaml
from tests.support.backends import run_backend
from tests.support.clients import proxy_clients
from tests.support.discovery import answered_by, metric, pool_ids
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy

AUTH = {"authorization": f"Bearer {TOKEN}"}


def config(certs_dir: Path, a_url: str, control_port: int, *, with_other: bool = True) -> str:
    other = """
        other:
          route: {path_prefix: "/other"}
          backends: [{id: o, address: "http://127.0.0.1:9"}]
        """ if with_other else ""
    return proxy_yaml(f"""
        app:
          route: {{path_prefix: "/"}}
          backends: [{{id: a, address: "{a_url}"}}]
        {other}
        """, certs_dir=certs_dir, extra=observability_yaml(free_udp_port(), control_port))


async def test_add_remove_token_validation_runtime_and_reloads(certs_dir: Path, tmp_path: Path) -> None:
    control_port = free_udp_port()
    path = tmp_path / "config.yaml"
    async with run_backend(name="a") as a, run_backend(name="m") as m:
        text = config(certs_dir, a.url, control_port)
        async with (running_proxy(text, config_path=path) as server,
                    proxy_clients(server.listeners[0].port, certs_dir) as clients,
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}", timeout=20) as api):
            body = {"address": m.url}  # the weight is the pool's default (no discovery here: 100)
            # the token is required, as for everything under /admin/
            assert (await api.put("/admin/upstreams/app/backends/m", json=body)).status_code == 401
            assert (await api.put("/admin/upstreams/app/backends/m", json=body,
                                  headers={"authorization": "Bearer wrong"})).status_code == 403
            assert pool_ids(server) == ["a"]

            added = await api.put("/admin/upstreams/app/backends/m", json=body, headers=AUTH)
            assert added.status_code == 200, added.text
            assert added.json()["result"] == "added"
            assert [(b["id"], b["weight"], b["origin"]) for b in added.json()["backends"]] == [("a", 100, "config"), ("m", 100, "admin")]
            # answered once the live generation uses it
            assert collections.Counter(await answered_by(clients, 6)) == {"a": 3, "m": 3}
            assert metric(server, "spooky_discovery_updates_total", upstream="app", source="admin") == 1
            assert metric(server, "spooky_discovery_backends", upstream="app", source="admin") == 1

            # checked like a config backend; unknown pools and ids; wrong methods
            bad = await api.put("/admin/upstreams/app/backends/x", json={"address": "ftp://h", "weight": 0}, headers=AUTH)
            assert bad.status_code == 400 and len(bad.json()["errors"]) == 2, bad.text
            assert (await api.put("/admin/upstreams/app/backends/x", content=b"{", headers=AUTH)).status_code == 400
            assert (await api.put("/admin/upstreams/nope/backends/x", json=body, headers=AUTH)).status_code == 404
            assert (await api.delete("/admin/upstreams/app/backends/zz", headers=AUTH)).status_code == 404
            conflict = await api.delete("/admin/upstreams/app/backends/a", headers=AUTH)
            assert conflict.status_code == 409 and "comes from config" in conflict.json()["message"]
            assert (await api.get("/admin/upstreams/app/backends/m", headers=AUTH)).status_code == 405
            assert (await api.put("/admin/upstreams/app/m", json=body, headers=AUTH)).status_code == 404

            runtime = (await api.get("/admin/runtime", headers=AUTH)).json()
            app = runtime["pools"]["app"]
            assert [(b["id"], b["origin"]) for b in app["backends"]] == [("a", "config"), ("m", "admin")]
            assert app["discovery"]["admin_backends"] == [{"id": "m", "address": m.url, "weight": None}]
            assert "discovery" not in runtime["pools"]["other"]

            # a reload that keeps the pool keeps the admin backend; never written to disk
            reloaded = await api.post("/admin/config/apply", content=text.replace('"/other"', '"/other2"').encode(), headers=AUTH)
            assert reloaded.status_code == 200, reloaded.text
            assert pool_ids(server) == ["a", "m"] and path.read_text() == text
            # replacing it by id: the same identity keeps its state
            state = server.generation.pools["app"].backends[1].state
            updated = await api.put("/admin/upstreams/app/backends/m", json={"address": m.url, "weight": 300}, headers=AUTH)
            assert updated.json()["result"] == "updated" and server.generation.pools["app"].backends[1].state is state
            assert collections.Counter(await answered_by(clients, 8)) == {"a": 2, "m": 6}

            removed = await api.delete("/admin/upstreams/app/backends/m", headers=AUTH)
            assert removed.status_code == 200 and removed.json()["result"] == "removed"
            assert pool_ids(server) == ["a"] and await answered_by(clients, 3) == ["a"] * 3

            # dropped with its pool
            assert (await api.put("/admin/upstreams/other/backends/m2", json=body, headers=AUTH)).status_code == 200
            assert pool_ids(server, "other") == ["o", "m2"]
            without = config(certs_dir, a.url, control_port, with_other=False)
            assert (await api.post("/admin/config/apply", content=without.encode(), headers=AUTH)).status_code == 200
            assert (await api.post("/admin/config/apply", content=text.encode(), headers=AUTH)).status_code == 200
            assert pool_ids(server, "other") == ["o"]
