"""The backend admin API with ``worker_threads: 2``: the supervisor forwards a change to
every worker and replays it to a worker that restarts after a crash."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import trio

from tests.integration.test_workers import AUTH, supervisor, write_config
from tests.support.backends import run_backend


def admin_ids(runtime: dict[str, object]) -> list[list[str]]:
    """Each worker's backend ids of pool app, as its runtime document shows them."""
    workers = runtime["workers"]
    assert isinstance(workers, list)
    return [[b["id"] for b in w["runtime"]["pools"]["app"]["backends"]] for w in workers]


async def test_every_worker_takes_the_change_and_a_restarted_one_gets_it_back(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="w") as backend, run_backend(name="m") as added:
        config, _, _, cport = write_config(tmp_path, certs_dir, backend.url)
        async with supervisor(config) as (_, output), httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", timeout=20) as api:
            put = await api.put("/admin/upstreams/app/backends/m", json={"address": added.url}, headers=AUTH)
            assert put.status_code == 200, put.text
            assert [w["status"] for w in put.json()["workers"]] == [200, 200]
            runtime = (await api.get("/admin/runtime", headers=AUTH)).json()
            assert admin_ids(runtime) == [["app-1", "m"], ["app-1", "m"]]
            assert (await api.put("/admin/upstreams/app/backends/m", headers={})).status_code == 401

            os.kill(runtime["workers"][0]["pid"], signal.SIGKILL)
            with trio.fail_after(20):
                await output.wait_for(rb"worker 0 \(pid \d+\) serving", 2)
            with trio.fail_after(10):  # the replay follows the worker's readiness report
                while admin_ids((await api.get("/admin/runtime", headers=AUTH)).json()) != [["app-1", "m"], ["app-1", "m"]]:
                    await trio.sleep(0.05)

            deleted = await api.delete("/admin/upstreams/app/backends/m", headers=AUTH)
            assert deleted.status_code == 200 and deleted.json()["result"] == "removed"
            assert admin_ids((await api.get("/admin/runtime", headers=AUTH)).json()) == [["app-1"], ["app-1"]]
