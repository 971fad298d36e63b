"""Access log, JSON log lines and route-decision logs/header, through the real proxy."""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.config import load_config_text
from spooky_trio.observability.logging import configure_logging
from spooky_trio.routing.table import RouteEntry, RoutingTable
from tests.support.backends import run_backend
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

FIELDS = {"time", "client", "protocol", "method", "authority", "path", "status", "pool",
          "backend", "upstream_protocol", "bytes_in", "bytes_out", "duration_ms", "outcome", "reason"}


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


async def test_access_log_fields_http3_and_bootstrap(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    config = proxy_yaml(h1_pool("{url}", prefix="/echo"), certs_dir=certs_dir)
    async with run_backend(name="h1") as backend, running_proxy(config.replace("{url}", backend.url)) as server:
        port = server.listeners[0].port
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            r = await c.request("POST", "/echo?x=1", body=b"hello", authority="localhost")
            assert r.status == 200
            missing = await c.request("GET", "/nowhere", authority="localhost")
            assert missing.status == 404
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))) as http:
            r1 = await http.get(f"https://localhost:{port}/echo")
            assert r1.status_code == 200
        await trio.sleep(0.05)
    lines = access_records(caplog)
    assert len(lines) == 3
    h3_ok, h3_404, h1_ok = lines
    assert set(h3_ok) == FIELDS
    assert h3_ok["protocol"] == "HTTP/3" and h3_ok["method"] == "POST" and h3_ok["path"] == "/echo?x=1"
    assert h3_ok["authority"] == "localhost" and h3_ok["status"] == 200 and h3_ok["outcome"] == "ok"
    assert h3_ok["pool"] == "app" and h3_ok["backend"] == "app-1" and h3_ok["upstream_protocol"] == "HTTP/1.1"
    assert h3_ok["bytes_in"] == 5 and h3_ok["bytes_out"] == len(r.body)
    assert h3_ok["client"].startswith("127.0.0.1:") and h3_ok["duration_ms"] >= 0
    assert h3_404["status"] == 404 and h3_404["outcome"] == "error" and h3_404["pool"] is None and h3_404["upstream_protocol"] is None
    assert h1_ok["protocol"].startswith("HTTP/1") and h1_ok["status"] == 200 and h1_ok["backend"] == "app-1"
    assert h1_ok["bytes_out"] == len(r1.content) and h1_ok["bytes_in"] == 0
    plain = [r.getMessage() for r in caplog.records if r.name == "spooky.access"][0]
    assert plain.startswith("time=") and "status=200" in plain and "pool=app" in plain and "outcome=ok" in plain


async def test_json_log_file_lines_parse(certs_dir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "spooky.log"
    config = load_config_text(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir,
                                         extra=f"log:\n  format: json\n  level: haunt\n  file:\n    enabled: true\n    path: {log_file}\n"))
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging(config.log)
        assert root.level == logging.DEBUG  # Spooky's "haunt"
        text = proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir)
        async with running_proxy(text) as server:
            async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost",
                                        cafile=str(certs_dir / "ca.pem")) as c:
                assert (await c.request("GET", "/nowhere-but-routed", authority="localhost")).status == 502
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    lines = log_file.read_text().splitlines()
    assert lines
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    access = [d for d in docs if d["logger"] == "spooky.access"]
    assert len(access) == 1 and FIELDS <= access[0].keys()
    assert access[0]["status"] == 502 and access[0]["protocol"] == "HTTP/3" and access[0]["outcome"] == "error"


async def test_route_decision_log_and_header(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.routing")
    pools = h1_pool("{url}", prefix="/", name="web") + h1_pool("{url}", prefix="/echo", name="api")
    extra = "observability:\n  routing:\n    enabled: true\n    expose_header: true\n"
    config = proxy_yaml(pools, certs_dir=certs_dir, extra=extra)
    async with run_backend(name="h1") as backend, running_proxy(config.replace("{url}", backend.url)) as server:
        async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost",
                                    cafile=str(certs_dir / "ca.pem")) as c:
            r = await c.request("GET", "/echo", authority="localhost")
    assert r.status == 200
    assert dict(r.headers)[b"x-spooky-route-decision"] == b'pool=api; reason="longest prefix /echo"'
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "spooky.routing"]
    assert messages == ["route GET localhost/echo -> api (longest prefix /echo)"]


def test_explain_names_the_tie_break() -> None:
    table = RoutingTable([
        RouteEntry("any", None, "/", None),
        RouteEntry("exact", "a.example.com", "/", None),
        RouteEntry("wild", "*.example.com", "/", None),
        RouteEntry("get", "a.example.com", "/", "GET"),
        RouteEntry("b", None, "/x", None),
        RouteEntry("a", None, "/x", None),
    ])
    assert table.explain("a.example.com", "/", "GET") == (table.entries[table.entries.index(RouteEntry("get", "a.example.com", "/", "GET"))], "method-specific")
    assert table.explain("a.example.com", "/", "POST")[1] == "exact host beats wildcard"
    assert table.explain("b.example.com", "/", "GET")[1] == "host-specific beats any host"
    assert table.explain("z.org", "/x", "GET")[0].pool == "a"  # type: ignore[union-attr]
    assert table.explain("z.org", "/x", "GET")[1] == "pool name tie-break"
    assert table.explain("z.org", "/", "GET") == (RouteEntry("any", None, "/", None), "only match")
    assert RoutingTable([]).explain("h", "/", "GET") == (None, "no match")
