"""Several independent listener blocks: each binds UDP and TCP on its own port and presents
its own certificate; Alt-Svc on each names that listener's port."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import trustme
from cryptography import x509

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, running_proxy


def _leaf(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(name, "127.0.0.1")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def _dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def test_two_listeners_each_with_own_identity(certs_dir: Path, ca: trustme.CA, tmp_path: Path) -> None:
    a_cert, a_key = _leaf(ca, tmp_path, "a.example")
    b_cert, b_key = _leaf(ca, tmp_path, "b.example")
    ports = [free_udp_port(), free_udp_port()]
    while ports[1] == ports[0]:
        ports[1] = free_udp_port()
    async with run_backend(name="app") as backend:
        config = (
            "listeners:\n"
            f"  - {{address: 127.0.0.1, port: {ports[0]}, tls: {{cert: {a_cert}, key: {a_key}}}}}\n"
            f"  - {{address: 127.0.0.1, port: {ports[1]}, tls: {{cert: {b_cert}, key: {b_key}}}}}\n"
            "upstream:\n  app:\n    route: {path_prefix: /}\n"
            f"    backends: [{{id: a, address: \"{backend.url}\"}}]\n"
            "security: {privileges: {enabled: false}}\n"
        )
        async with running_proxy(config) as server:
            assert [listener.port for listener in server.listeners] == ports
            ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
            for port, name in zip(ports, ["a.example", "b.example"]):
                async with H3Client.connect("127.0.0.1", port, server_name=name, cafile=str(certs_dir / "ca.pem")) as c:
                    assert _dns_names(c.peer_certificate) == [name]
                    assert (await c.request("GET", "/echo", authority=name)).status == 200
                async with httpx.AsyncClient(verify=ctx, http2=True) as tcp:
                    r = await tcp.get(f"https://127.0.0.1:{port}/echo", headers={"host": name})
                    assert r.status_code == 200
                    assert r.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
    assert len(backend.requests) == 4
