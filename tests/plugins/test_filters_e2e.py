"""Plugin filters through the real proxy, on HTTP/3, HTTP/2 and HTTP/1.1 (docs/plugins.md):
answers, request and response changes, the order of several filters, what the view shows,
and the isolation contract (a raising, hanging or garbage-returning hook: 500 for that
request, logged and counted, every other request served)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import trio

from spooky_trio.serving.server import Server
from tests.plugins import samples
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import proxy_yaml, running_proxy


def plugins_yaml(*entries: str) -> str:
    """A top-level ``plugins`` list of ``name: NAME, object: tests.plugins.samples:ATTR`` entries
    (``"name=Attr"`` or ``"name=Attr,{extra keys}"``)."""
    lines = ["plugins:"]
    for entry in entries:
        name, _, rest = entry.partition("=")
        attr, _, extra = rest.partition(",")
        lines.append(f"  - {{name: {name}, object: 'tests.plugins.samples:{attr}'{', ' + extra if extra else ''}}}")
    return "\n".join(lines) + "\n"


def pool_yaml(url: str, filters: str, *, prefix: str = "/", name: str = "app", extra: str = "") -> str:
    return f"""
{name}:
  route: {{path_prefix: "{prefix}"}}
  backends: [{{id: {name}-1, address: "{url}"}}]
  filters: [{filters}]
{extra}"""


def access(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


def errors(server: Server, plugin: str, kind: str) -> float:
    return server.metrics.registry.get_sample_value("spooky_plugin_errors_total", {"plugin": plugin, "kind": kind}) or 0.0


@pytest.fixture(autouse=True)
def _clean_journal() -> None:
    samples.JOURNAL.clear()


async def test_several_filters_in_order_and_response_hooks_in_reverse(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "one, two"), certs_dir=certs_dir,
                            extra=plugins_yaml("one=Stamp,config: {tag: first}", "two=Stamp,config: {tag: second}"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                samples.JOURNAL.clear()
                reply = await clients.request(protocol, "/echo")
                assert reply.status == 200, protocol
                assert reply.echoed("x-stamp") == ["first", "second"], protocol  # request hooks in the pool's order
                assert reply.values("x-stamp") == ["second", "first"], protocol  # response hooks last first
                assert samples.JOURNAL == ["request:first", "request:second", "response:second", "response:first"]


async def test_a_filter_answers_and_the_backend_never_sees_it(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "stamp, deny, after"), certs_dir=certs_dir,
                            extra=plugins_yaml("stamp=Stamp", "deny=Answer,config: {status: 451}", "after=Stamp,config: {tag: after}"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                samples.JOURNAL.clear()
                reply = await clients.request(protocol, "/answer/x")
                assert (reply.status, reply.body) == (451, b"answered by a filter for /answer/x\n"), protocol
                assert reply.header("x-answered") == "yes" and reply.header("content-type") == "text/plain; charset=utf-8"
                assert reply.header("content-length") == str(len(reply.body))
                # the filters before it see the answer on its way out; the one after never ran
                assert reply.values("x-stamp") == ["stamp"], protocol
                assert samples.JOURNAL == ["request:stamp", "response:stamp"], protocol
                assert (await clients.request(protocol, "/echo")).status == 200
    assert len(backend.requests) == 3
    answered = [entry for entry in access(caplog) if entry["status"] == 451]
    assert [entry["reason"] for entry in answered] == ["plugin:deny:denied"] * 3
    by_reason = {"reason": "plugin:deny:denied", "status_class": "4xx"}
    assert server.metrics.registry.get_sample_value("spooky_requests_by_reason_total", by_reason) == 3


async def test_request_and_response_changes(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "rewrite"), certs_dir=certs_dir, extra=plugins_yaml("rewrite=Rewrite"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                reply = await clients.request(protocol, "/old/echo?a=1", [("x-drop", "secret"), ("x-keep", "1")])
                assert reply.status == 200, protocol
                seen = json.loads(reply.body)
                assert (seen["path"], seen["query"]) == ("/new/echo", "rewritten=1"), protocol
                assert reply.echoed("x-drop") == [] and reply.echoed("x-keep") == ["1"]
                gone = await clients.request(protocol, "/status/404")
                assert gone.status == 410, protocol  # the response hook changed the backend's status
                assert gone.header("server") is None
    logged = [entry["path"] for entry in access(caplog) if entry["status"] == 200]
    assert logged == ["/old/echo?a=1"] * 3  # the access log keeps what the client asked for


async def test_the_view_shows_the_request_context(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "ctx", prefix="/ctx", name="ctxpool"), certs_dir=certs_dir, extra=plugins_yaml("ctx=Context"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol, name in zip(PROTOCOLS, ("HTTP/3", "HTTP/2", "HTTP/1.1"), strict=True):
                reply = await clients.request(protocol, "/ctx/echo?q=1")
                assert reply.status == 200, protocol
                seen = json.loads(reply.echoed("x-context")[0])
                client = seen.pop("client")
                assert client[0] == "127.0.0.1" and isinstance(client[1], int)
                assert seen == {
                    "method": "GET", "authority": f"localhost:{server.listeners[0].port}" if protocol != "h3" else "localhost",
                    "path": "/ctx/echo", "query": "q=1", "protocol": name, "pool": "ctxpool",
                    "route": [None, "/ctx", None], "sni": "localhost", "subject": None, "claims": {}, "early_data": False,
                    "body": True,
                }, protocol
                assert reply.header("x-state") == "kept"  # request.state lives from request to response hook


async def test_a_broken_hook_fails_only_its_request(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "stamp, raise, hang, garbage"), certs_dir=certs_dir,
                            extra=plugins_yaml("stamp=Stamp", "raise=Raise", "hang=Hang,plugin_timeout_ms: 200", "garbage=Garbage"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                async with trio.open_nursery() as nursery:
                    outcomes: dict[str, int] = {}

                    async def get(path: str, protocol: str = protocol) -> None:
                        outcomes[path] = (await clients.request(protocol, path)).status

                    for path in ("/boom", "/exit", "/boom-response", "/hang", "/garbage", "/echo", "/status/204"):
                        nursery.start_soon(get, path)
                assert outcomes == {"/boom": 500, "/exit": 500, "/boom-response": 500, "/hang": 500, "/garbage": 500,
                                    "/echo": 200, "/status/204": 204}, protocol
                broken = await clients.request(protocol, "/boom")
                assert b"broke" not in broken.body and b"RuntimeError" not in broken.body  # no plugin detail leaks
                # a failed request hook: the filters before it see its 500 like any answer...
                assert broken.values("x-stamp") == ["stamp"]
                # ...a failed response hook: its 500 goes out without any response hook
                assert (await clients.request(protocol, "/boom-response")).values("x-stamp") == []
    reasons = {entry["path"]: entry["reason"] for entry in access(caplog) if entry["status"] == 500}
    assert reasons == {"/boom": "plugin_error:raise", "/exit": "plugin_error:raise", "/boom-response": "plugin_error:raise",
                       "/hang": "plugin_timeout:hang", "/garbage": "plugin_invalid:garbage"}
    assert (errors(server, "raise", "exception"), errors(server, "hang", "timeout"), errors(server, "garbage", "invalid")) == (15, 3, 3)
    logged = [r.getMessage() for r in caplog.records if r.name == "spooky.plugins"]
    # 15 failures, one line (with its traceback): at most one per plugin every 10 s
    assert len([m for m in logged if m.startswith("plugin raise: on_")]) == 1
    assert any(m.startswith("plugin hang: on_request did not finish within plugin_timeout_ms (200 ms)") for m in logged)
    assert any(m.startswith("plugin garbage: on_request returned a int") for m in logged)
    assert len([r for r in backend.requests if r["path"] == "/boom-response"]) == 6  # its request hook let it through


async def test_a_blocking_hook_is_reported(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spooky.plugins")
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "hang"), certs_dir=certs_dir, extra=plugins_yaml("hang=Hang,config: {block_ms: 120}"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            reply = await clients.request("h2", "/block")
            assert reply.status == 404  # within its deadline: the backend's answer, but the stall is on record
    stalls = server.metrics.registry.get_sample_value("spooky_plugin_event_loop_stalls_total", {"plugin": "hang"})
    assert stalls == 1
    assert any("held the event loop for" in r.getMessage() for r in caplog.records)


async def test_a_bounded_body_transform(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(pool_yaml(backend.url, "body"), certs_dir=certs_dir, extra=plugins_yaml("body=Body,config: {limit: 64}"))
        async with running_proxy(config) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                reply = await clients.request(protocol, "/echo", method="POST", body=b"hello plugin")
                assert reply.status == 200, protocol
                seen = json.loads(reply.body)
                assert (seen["body_len"], reply.echoed("x-body-seen")) == (12, ["12"]), protocol
                assert seen["body_sha256"] == hashlib.sha256(b"HELLO PLUGIN").hexdigest()
                too_big = await clients.request(protocol, "/echo", method="POST", body=b"x" * 65)
                assert too_big.status == 413, protocol
