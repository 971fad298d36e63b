"""Reload building blocks without sockets: the diff summary, atomic writes, chained
activity, deferred backend reconfiguration, and the control API's bounded request body."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.config.diff import diff_line, diff_summary
from spooky_trio.config.persist import write_atomic
from spooky_trio.core.activity import Activity
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.observability.http_server import (
    HttpEndpoint,
    HttpRequest,
    HttpResponse,
)

BASE = """
listeners:
  - {{address: 127.0.0.1, port: 9001, tls: {{cert: /c.pem, key: /k.pem}}}}
{more_listeners}
upstream:
  app:
    route: {{path_prefix: {prefix}}}
    backends:
      - {{id: a, address: "http://127.0.0.1:8001"{a_extra}}}
      - {{id: b, address: "http://127.0.0.1:{b_port}"}}
{more_pools}
"""


def cfg(*, prefix: str = "/", a_extra: str = "", b_port: int = 8002, more_listeners: str = "", more_pools: str = "", tail: str = ""):  # type: ignore[no-untyped-def]
    return load_config_text(BASE.format(prefix=prefix, a_extra=a_extra, b_port=b_port, more_listeners=more_listeners,
                                        more_pools=more_pools) + tail)


class TestDiffSummary:
    def test_identical_configs_change_nothing(self) -> None:
        diff = diff_summary(cfg(), cfg())
        for kind in ("pools", "routes", "backends", "listeners"):
            assert diff[kind] == {"added": [], "removed": [], "changed": []}
        assert diff["other"] == []
        assert diff_line(diff) == "pools +0 -0 ~0, routes +0 -0 ~0, backends +0 -0 ~0, listeners +0 -0 ~0"

    def test_backend_identity_is_pool_id_and_address(self) -> None:
        diff = diff_summary(cfg(), cfg(b_port=8003, a_extra=", weight: 5"))
        assert diff["backends"] == {
            "added": ["app/b@http://127.0.0.1:8003"],
            "removed": ["app/b@http://127.0.0.1:8002"],
            "changed": ["app/a@http://127.0.0.1:8001"],
        }
        assert diff["pools"]["changed"] == ["app"]

    def test_routes_listeners_and_sections(self) -> None:
        new = cfg(
            prefix="/v2",
            more_listeners="  - {address: 127.0.0.1, port: 9002, tls: {cert: /c.pem, key: /k.pem}}",
            more_pools='  other:\n    route: {host: example.com}\n    backends:\n      - {id: x, address: "http://127.0.0.1:8009"}',
            tail="performance:\n  backend_timeout_ms: 3000\n  backend_body_idle_timeout_ms: 3000\nlog:\n  level: debug\n",
        )
        diff = diff_summary(cfg(), new)
        assert diff["routes"] == {"added": ["other: host=example.com"], "removed": [], "changed": ["app: path_prefix=/ -> path_prefix=/v2"]}
        assert diff["listeners"]["added"] == ["127.0.0.1:9002"]
        assert diff["other"] == ["log", "performance"]
        line = diff_line(diff)
        assert "listeners +1 -0 ~0" in line and "other: log, performance" in line and "+pool other" in line


class TestWriteAtomic:
    def test_replaces_content_and_keeps_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "spooky.yaml"
        path.write_text("old\n")
        os.chmod(path, 0o640)
        inode = path.stat().st_ino
        write_atomic(str(path), "new\n")
        assert path.read_text() == "new\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.stat().st_ino != inode  # a new file renamed over the old one
        assert [p.name for p in tmp_path.iterdir()] == ["spooky.yaml"]

    def test_failure_leaves_the_old_file_and_no_temp_file(self, tmp_path: Path) -> None:
        target = tmp_path / "dir-in-the-way"
        target.mkdir()
        (target / "keep").write_text("x")
        with pytest.raises(OSError):
            write_atomic(str(target), "new\n")  # os.replace cannot put a file over a directory
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


class TestChainedActivity:
    async def test_child_counts_in_parent_and_drains_alone(self) -> None:
        parent = Activity()
        one, two = Activity(parent), Activity(parent)
        one.enter()
        two.enter()
        assert parent.count == 2
        one.exit()
        with trio.fail_after(1):
            await one.wait_idle()  # one is idle while two still works
        assert parent.count == 1 and two.count == 1
        two.exit()
        with trio.fail_after(1):
            await parent.wait_idle()


class TestDeferredActivation:
    def test_build_without_activate_leaves_running_states_alone(self) -> None:
        store = StateStore()
        check = ", health_check: {failure_threshold: 4, success_threshold: 1}"
        running = Generation.build(cfg(a_extra=check), state=store)
        state = running.pools["app"].backends[0].state
        assert state.active is not None and state.active.failure_threshold == 4
        staged = Generation.build(cfg(), number=2, state=store, activate=False)
        assert staged.pools["app"].backends[0].state is state
        assert state.active is not None and state.active.failure_threshold == 4  # untouched until the commit
        staged.activate()
        assert state.active is None


class TestRequestBody:
    async def test_body_and_query_reach_the_handler_and_large_bodies_get_413(self) -> None:
        seen: list[HttpRequest] = []

        async def handler(request: HttpRequest) -> HttpResponse:
            seen.append(request)
            return HttpResponse(200, b"ok")

        endpoint = HttpEndpoint(name="test", address="127.0.0.1", port=0, handler=handler, max_connections=4,
                                connection_timeout=5, max_body_bytes=1000)
        endpoint.bind()
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve)

            async def post(body: bytes) -> int:
                stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
                conn = h11.Connection(h11.CLIENT)
                data = conn.send(h11.Request(method="POST", target="/x?persist=true",
                                             headers=[("host", "x"), ("content-length", str(len(body)))]))
                data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                while True:
                    conn.receive_data(await stream.receive_some(65536))
                    event = conn.next_event()
                    if isinstance(event, h11.Response):
                        await stream.aclose()
                        return event.status_code

            with trio.fail_after(5):
                assert await post(b"upstream: {}\n") == 200
                assert await post(b"x" * 5000) == 413
            nursery.cancel_scope.cancel()
        assert [(r.path, r.query, r.body) for r in seen] == [("/x", "persist=true", b"upstream: {}\n")]
