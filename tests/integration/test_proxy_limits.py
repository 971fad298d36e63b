"""Response limits, body timeouts and SNI certificate selection through the real proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography import x509

from spooky_trio.clients.errors import H3StreamReset
from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, running_proxy

H3_INTERNAL_ERROR = 0x102


def _pool(url: str) -> str:
    return f"""
  app:
    route:
      path_prefix: "/"
    backends:
      - id: "app-1"
        address: "{url}"
"""


def _config(certs_dir: Path, upstream: str, *, extra: str = "", tls: str | None = None) -> str:
    tls = tls or f"    cert: {certs_dir / 'localhost.pem'}\n    key: {certs_dir / 'localhost.key'}\n"
    return (
        f"listen:\n  address: 127.0.0.1\n  port: {free_udp_port()}\n  tls:\n{tls}"
        f"upstream:{upstream}security:\n  privileges:\n    enabled: false\n{extra}"
    )


LIMITS = """
performance:
  max_response_body_bytes: 100000
  unknown_length_response_prebuffer_bytes: 100000
  backend_timeout_ms: 500
  backend_body_idle_timeout_ms: 500
  backend_body_total_timeout_ms: 500
"""


async def test_response_limit_503_before_headers_and_reset_after(certs_dir: Path) -> None:
    async with run_backend(name="big") as backend, running_proxy(_config(certs_dir, _pool(backend.url), extra=LIMITS)) as server:
        port = server.listeners[0].port
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            # declared length over the limit: refused before any header goes out
            r = await c.request("GET", "/bytes/200000", authority="localhost")
            assert r.status == 503 and b"response_body_too_large" in r.body
            # unknown length: headers went out, so the stream is reset once the limit is passed
            with pytest.raises(H3StreamReset) as info:
                async with c.stream_request("GET", "/chunked/200000", authority="localhost") as resp:
                    assert resp.status == 200
                    while await resp.receive():
                        pass
            assert info.value.code == H3_INTERNAL_ERROR
            # a body under the limit is untouched
            r = await c.request("GET", "/chunked/90000", authority="localhost")
            assert r.status == 200 and len(r.body) == 90000


async def test_stalled_response_body_resets_stream(certs_dir: Path) -> None:
    async with run_backend(name="stall") as backend, running_proxy(_config(certs_dir, _pool(backend.url), extra=LIMITS)) as server:
        port = server.listeners[0].port
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            with pytest.raises(H3StreamReset):
                async with c.stream_request("GET", "/slowbody/3000", authority="localhost") as resp:
                    assert resp.status == 200
                    while await resp.receive():
                        pass
            assert (await c.request("GET", "/echo", authority="localhost")).status == 200


def _write_leaf(ca: trustme.CA, directory: Path, name: str, *sans: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*sans)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


async def _peer_sans(port: int, server_name: str, ca_file: Path) -> list[str]:
    async with H3Client.connect("127.0.0.1", port, server_name=server_name, cafile=str(ca_file), verify=False) as c:
        der = c.peer_certificate
    cert = x509.load_der_x509_certificate(der) if isinstance(der, bytes) else der
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def test_sni_selection_exact_default_and_first(certs_dir: Path, ca: trustme.CA, tmp_path: Path) -> None:
    a_cert, a_key = _write_leaf(ca, tmp_path, "a", "a.example")
    b_cert, b_key = _write_leaf(ca, tmp_path, "b", "b.example")
    d_cert, d_key = _write_leaf(ca, tmp_path, "d", "default.example")
    named = (
        "    certificates:\n"
        f"      - {{server_name: a.example, cert: {a_cert}, key: {a_key}}}\n"
        f"      - {{server_name: b.example, cert: {b_cert}, key: {b_key}}}\n"
    )
    async with run_backend(name="x") as backend:
        with_default = named + f"    cert: {d_cert}\n    key: {d_key}\n"
        async with running_proxy(_config(certs_dir, _pool(backend.url), tls=with_default)) as server:
            port = server.listeners[0].port
            assert await _peer_sans(port, "a.example", certs_dir / "ca.pem") == ["a.example"]
            assert await _peer_sans(port, "B.EXAMPLE", certs_dir / "ca.pem") == ["b.example"]
            assert await _peer_sans(port, "unknown.example", certs_dir / "ca.pem") == ["default.example"]
        async with running_proxy(_config(certs_dir, _pool(backend.url), tls=named)) as server:
            port = server.listeners[0].port
            assert await _peer_sans(port, "unknown.example", certs_dir / "ca.pem") == ["a.example"]
            assert await _peer_sans(port, "b.example", certs_dir / "ca.pem") == ["b.example"]
