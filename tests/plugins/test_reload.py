"""Plugins and reloads (docs/plugins.md "Reloads"): a reload builds new filter objects from
the new config; requests already inside the old ones finish with them; the old generation's
background tasks are cancelled once those requests are done, the new one's run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from tests.plugins import samples
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy


def config(url: str, certs_dir: Path, port: int, tag: str) -> str:
    pools = f"""
app:
  route: {{path_prefix: "/"}}
  backends: [{{id: app-1, address: "{url}"}}]
  filters: [slow, ticker]
"""
    plugins = f"""
plugins:
  - {{name: slow, object: 'tests.plugins.samples:Slow', config: {{tag: {tag}}}, plugin_timeout_ms: 30000}}
  - {{name: ticker, object: 'tests.plugins.samples:Ticker', config: {{tag: {tag}}}}}
"""
    return proxy_yaml(pools, certs_dir=certs_dir, port=port, extra=plugins)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for ``condition()``: a state another task reaches, not a fixed delay."""
    try:
        with trio.fail_after(10):
            while not condition():
                await trio.sleep(0.005)
    except trio.TooSlowError:
        raise AssertionError(f"never happened: {what}") from None


async def test_reload_builds_new_filters_and_inflight_requests_keep_the_old(certs_dir: Path, tmp_path: Path) -> None:
    samples.JOURNAL.clear()
    samples.RUNNING.clear()
    samples.RELEASE.reset()
    port = free_udp_port()
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="h1") as backend:
        async with running_proxy(config(backend.url, certs_dir, port, "old"), config_path=path) as server, \
                proxy_clients(port, certs_dir) as clients:
            await until(lambda: "old" in samples.RUNNING, "the first generation's background task")
            held: dict[str, tuple[str | None, list[str]]] = {}
            async with trio.open_nursery() as nursery:
                async def slow(protocol: str) -> None:
                    reply = await clients.request(protocol, "/echo/slow")
                    assert reply.status == 404  # the backend's answer to an unknown path
                    held[protocol] = (reply.header("x-plugin-tag"), [v for n, v in reply.headers if n == "x-plugin-tag"])

                for protocol in PROTOCOLS:
                    nursery.start_soon(slow, protocol)
                await until(lambda: samples.JOURNAL.count("waiting:old") == 3, "three requests inside the old filter")

                path.write_text(config(backend.url, certs_dir, port, "new"))
                outcome = await server.reloads.reload_file()
                assert outcome.status == 200, outcome.body
                for protocol in PROTOCOLS:
                    fresh = await clients.request(protocol, "/echo")
                    assert fresh.status == 200
                    assert (fresh.echoed("x-plugin-tag"), fresh.header("x-plugin-tag")) == (["new"], "new"), protocol
                await until(lambda: "new" in samples.RUNNING, "the new generation's background task")
                # the old generation is retired, but requests are still inside its filters
                assert "old" in samples.RUNNING
                samples.RELEASE.set()
            assert held == {protocol: ("old", ["old"]) for protocol in PROTOCOLS}
            await until(lambda: "old" not in samples.RUNNING, "the old background task cancelled")
            assert "new" in samples.RUNNING
            upstream = [[v for n, v in r["headers"] if n == "x-plugin-tag"] for r in backend.requests if r["path"] == "/echo/slow"]
            assert upstream == [["old"]] * 3


async def test_a_reload_with_a_plugin_that_cannot_work_is_refused(certs_dir: Path, tmp_path: Path) -> None:
    samples.RELEASE.reset()
    port = free_udp_port()
    path = tmp_path / "spooky.yaml"
    async with run_backend(name="h1") as backend:
        good = config(backend.url, certs_dir, port, "v1")
        async with running_proxy(good, config_path=path) as server, proxy_clients(port, certs_dir) as clients:
            broken = {
                "unknown name": (good.replace("filters: [slow, ticker]", "filters: [slow, nope]"), "upstream.app.filters[1]"),
                "factory refuses": (good.replace("config: {tag: v1}, plugin_timeout_ms", "config: {tag: [1]}, plugin_timeout_ms"),
                                    "plugins[0].config.tag"),
                "missing code": (good.replace("samples:Slow", "samples:Gone"), "plugins[0].object"),
            }
            for what, (text, key) in broken.items():
                assert text != good, what
                path.write_text(text)
                outcome = await server.reloads.reload_file()
                assert outcome.status != 200, what
                errors = outcome.body["errors"]
                assert isinstance(errors, list) and key in [error["path"] for error in errors], (what, outcome.body)
                for protocol in PROTOCOLS:  # the running generation goes on serving, filters and all
                    reply = await clients.request(protocol, "/echo")
                    assert (reply.status, reply.header("x-plugin-tag")) == (200, "v1"), (what, protocol)
