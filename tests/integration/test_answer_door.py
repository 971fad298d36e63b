"""Every answer leaves through one door (proxy/answers.py): an ingress-level refusal, a
filter's refusal and a backend's answer alike get one access-log line with the ``reason``
that decided it and one count in ``spooky_requests_total`` and
``spooky_requests_by_reason_total`` (docs/architecture.md, "One answer door")."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx
import pytest

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.bootstrap import client_context, read_until_close, status_of, tls_connect
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

EXTRA = """
performance:
  max_request_body_bytes: 16
resilience:
  protocol:
    max_headers_count: 8
"""


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


def counted(server: Server, reason: str, status_class: str) -> float:
    registry = server.metrics.registry
    return registry.get_sample_value("spooky_requests_by_reason_total", {"reason": reason, "status_class": status_class}) or 0.0


async def test_ingress_and_chain_refusals_are_logged_and_counted(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    config = proxy_yaml(h1_pool("{url}"), certs_dir=certs_dir, extra=EXTRA)
    async with run_backend(name="h1") as backend, running_proxy(config.replace("{url}", backend.url)) as server:
        port = server.listeners[0].port
        # HTTP/3: 431 from the QUIC ingress (too many header fields), before any chain
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            r = await c.request("GET", "/many", authority="localhost", headers=[(f"x-h{i}", "v") for i in range(20)])
            assert r.status == 431
            ok = await c.request("GET", "/echo", authority="localhost")
            assert ok.status == 200
        # HTTP/1.1: 400 from the h11 ingress (a header line without a colon)
        stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        await stream.send_all(b"GET /bad HTTP/1.1\r\nhost: localhost\r\nno colon here\r\n\r\n")
        raw = await read_until_close(stream)
        assert status_of(raw) == 400 and b"alt-svc" in raw.lower()
        # HTTP/2: 413 from the chain's body_limit step (a declared length over the limit)
        async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))) as http:
            big = await http.post(f"https://localhost:{port}/upload", content=b"x" * 64)
            assert big.status_code == 413 and big.http_version == "HTTP/2"
    # read after the drain: it waits for every request in flight, refusals included, to be recorded
    requests_total = server.metrics.registry.get_sample_value("spooky_requests_total")
    counts = {
        "too_many_headers": counted(server, "too_many_headers", "4xx"),
        "malformed_request": counted(server, "malformed_request", "4xx"),
        "request_body_too_large": counted(server, "request_body_too_large", "4xx"),
        "ok": counted(server, "ok", "2xx"),
    }
    policy = server.metrics.registry.get_sample_value("spooky_policy_denied_total")
    validation = server.metrics.registry.get_sample_value("spooky_request_validation_rejects_total")
    assert requests_total == 4
    assert counts == {"too_many_headers": 1, "malformed_request": 1, "request_body_too_large": 1, "ok": 1}
    assert policy == 2 and validation == 1  # 431 and 413 are policy denials, 400 a validation reject
    lines = {line["reason"]: line for line in access_records(caplog)}
    assert set(lines) == {"too_many_headers", "malformed_request", "request_body_too_large", "ok"}
    h3 = lines["too_many_headers"]
    assert h3["protocol"] == "HTTP/3" and h3["status"] == 431 and h3["outcome"] == "error" and h3["path"] == "/many"
    h1 = lines["malformed_request"]
    assert h1["protocol"] == "HTTP/1.1" and h1["status"] == 400 and h1["outcome"] == "error"
    h2 = lines["request_body_too_large"]
    assert h2["protocol"] == "HTTP/2" and h2["status"] == 413 and h2["path"] == "/upload" and h2["pool"] == "app"
    assert lines["ok"]["status"] == 200 and lines["ok"]["outcome"] == "ok" and lines["ok"]["backend"] == "app-1"
