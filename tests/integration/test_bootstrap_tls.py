"""Bootstrap listener TLS: SNI identity selection, SAN checks at startup, client certificates."""

from __future__ import annotations

import datetime
import json
import logging
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography import x509

from spooky_trio.config import load_config_text
from spooky_trio.serving.exits import StartupError
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.bootstrap import client_context, read_until_close, tls_connect
from tests.support.proxy import free_udp_port, running_proxy


def write_leaf(ca: trustme.CA, directory: Path, name: str, *identities: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*identities)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    return cert, key


def config_yaml(backend_url: str, tls_block: str) -> str:
    return (
        "version: 1\n"
        "listen:\n"
        "  address: 127.0.0.1\n"
        f"  port: {free_udp_port()}\n"
        "  tls:\n" + tls_block +
        "upstream:\n"
        "  app:\n"
        "    route:\n"
        "      path_prefix: /\n"
        "    backends:\n"
        "      - id: app-1\n"
        f"        address: {backend_url}\n"
        "security:\n  privileges:\n    enabled: false\n"
    )


def der_of(path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


async def peer_der(port: int, certs_dir: Path, server_name: str | None) -> bytes:
    ctx = client_context(certs_dir)
    ctx.check_hostname = False  # we compare the exact certificate instead
    stream = await tls_connect(port, ctx, server_name)
    try:
        der = stream.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        await trio.aclose_forcefully(stream)


@pytest.fixture
def sni_certs(tmp_path: Path, ca: trustme.CA) -> dict[str, tuple[Path, Path]]:
    return {
        "a": write_leaf(ca, tmp_path, "a", "a.example"),
        "b": write_leaf(ca, tmp_path, "b", "*.b.example"),
    }


async def test_sni_selects_identity_in_schema_order(certs_dir: Path, sni_certs: dict[str, tuple[Path, Path]]) -> None:
    (a_cert, a_key), (b_cert, b_key) = sni_certs["a"], sni_certs["b"]
    tls = (
        f"    cert: {certs_dir / 'localhost.pem'}\n    key: {certs_dir / 'localhost.key'}\n"
        "    certificates:\n"
        f"      - {{server_name: a.example, cert: {a_cert}, key: {a_key}}}\n"
        f"      - {{server_name: x.b.example, cert: {b_cert}, key: {b_key}}}\n"
    )
    async with run_backend(name="h1") as backend, running_proxy(config_yaml(backend.url, tls)) as server:
        port = server.bootstrap_listeners[0].port
        default = der_of(certs_dir / "localhost.pem")
        assert await peer_der(port, certs_dir, "a.example") == der_of(a_cert)
        assert await peer_der(port, certs_dir, "A.EXAMPLE") == der_of(a_cert)
        assert await peer_der(port, certs_dir, "x.b.example") == der_of(b_cert)
        assert await peer_der(port, certs_dir, "y.b.example") == default  # exact match only
        assert await peer_der(port, certs_dir, "unknown.example") == default
        assert await peer_der(port, certs_dir, None) == default
        # a request over an SNI identity is served normally
        ctx = client_context(certs_dir)
        async with httpx.AsyncClient(verify=ctx) as client:
            r = await client.get(f"https://127.0.0.1:{port}/health", headers={"host": "a.example"}, extensions={"sni_hostname": "a.example"})
            assert r.status_code == 200
        stats = server.bootstrap_listeners[0].tls.stats
        assert stats["sni.sni"] >= 4 and stats["sni.default"] >= 2


async def test_without_default_the_first_certificate_is_the_fallback(certs_dir: Path, sni_certs: dict[str, tuple[Path, Path]]) -> None:
    (a_cert, a_key), (b_cert, b_key) = sni_certs["a"], sni_certs["b"]
    tls = (
        "    certificates:\n"
        f"      - {{server_name: a.example, cert: {a_cert}, key: {a_key}}}\n"
        f"      - {{server_name: x.b.example, cert: {b_cert}, key: {b_key}}}\n"
    )
    async with run_backend(name="h1") as backend, running_proxy(config_yaml(backend.url, tls)) as server:
        port = server.bootstrap_listeners[0].port
        assert await peer_der(port, certs_dir, "x.b.example") == der_of(b_cert)
        assert await peer_der(port, certs_dir, "other.example") == der_of(a_cert)
        assert await peer_der(port, certs_dir, None) == der_of(a_cert)
        assert server.bootstrap_listeners[0].tls.stats["sni.fallback_first"] >= 2


def test_startup_fails_when_server_name_not_covered(certs_dir: Path, sni_certs: dict[str, tuple[Path, Path]]) -> None:
    a_cert, a_key = sni_certs["a"]
    tls = f"    certificates:\n      - {{server_name: wrong.example, cert: {a_cert}, key: {a_key}}}\n"
    config = load_config_text(config_yaml("http://127.0.0.1:1", tls))
    with pytest.raises(StartupError, match=r"'wrong.example' is not covered by the subjectAltName"):
        Server(config)


# --- client certificates ---


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="client CA")


@pytest.fixture(scope="module")
def clients(client_ca: trustme.CA) -> dict[str, trustme.LeafCert]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "valid": client_ca.issue_cert("alice@example.com", common_name="alice", organization_name="Example Corp", organization_unit_name="eng"),
        "expired": client_ca.issue_cert("old@example.com", common_name="old", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)),
        "unknown_ca": trustme.CA().issue_cert("mallory@example.com", common_name="mallory"),
    }


def client_auth_tls(certs_dir: Path, client_ca_file: Path, required: bool) -> str:
    return (
        f"    cert: {certs_dir / 'localhost.pem'}\n    key: {certs_dir / 'localhost.key'}\n"
        "    client_auth:\n"
        "      enabled: true\n"
        f"      require_client_cert: {'true' if required else 'false'}\n"
        f"      ca_file: {client_ca_file}\n"
    )


async def get_echo(port: int, certs_dir: Path, cert: trustme.LeafCert | None) -> dict[str, str]:
    async with httpx.AsyncClient(verify=client_context(certs_dir, cert=cert)) as client:
        r = await client.get(f"https://localhost:{port}/echo", headers={"x-client-cert-subject": "CN=forged"})
        assert r.status_code == 200
        return dict(json.loads(r.content)["headers"])


async def rejected(port: int, certs_dir: Path, cert: trustme.LeafCert | None) -> bool:
    """True when the server refused the connection (at or right after the handshake)."""
    try:
        stream = await tls_connect(port, client_context(certs_dir, cert=cert))
    except (trio.BrokenResourceError, ssl.SSLError):
        return True
    try:
        await stream.send_all(b"GET /echo HTTP/1.1\r\nhost: localhost\r\n\r\n")
        data = await read_until_close(stream)
    except trio.BrokenResourceError:
        return True
    finally:
        await trio.aclose_forcefully(stream)
    return not data.startswith(b"HTTP/1.1 200")


@pytest.fixture
def client_ca_file(tmp_path: Path, client_ca: trustme.CA) -> Path:
    path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(path))
    return path


async def test_required_client_certificates(certs_dir: Path, client_ca_file: Path, clients: dict[str, trustme.LeafCert], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spooky.ingress.tls")
    async with run_backend(name="h1") as backend, running_proxy(config_yaml(backend.url, client_auth_tls(certs_dir, client_ca_file, True))) as server:
        port = server.bootstrap_listeners[0].port
        headers = await get_echo(port, certs_dir, clients["valid"])
        assert headers["x-client-cert-subject"] == "CN=alice,OU=eng,O=Example Corp"
        stats = server.bootstrap_listeners[0].tls.stats
        for name, reason in ((None, "missing"), ("expired", "expired"), ("unknown_ca", "unknown_issuer")):
            assert await rejected(port, certs_dir, clients[name] if name else None)
            assert stats[f"handshake_failed.{reason}"] == 1, dict(stats)
            assert "client certificate rejected from ('127.0.0.1'" in caplog.text and f": {reason}" in caplog.text
        assert len(backend.requests) == 1


async def test_optional_client_certificates(certs_dir: Path, client_ca_file: Path, clients: dict[str, trustme.LeafCert]) -> None:
    async with run_backend(name="h1") as backend, running_proxy(config_yaml(backend.url, client_auth_tls(certs_dir, client_ca_file, False))) as server:
        port = server.bootstrap_listeners[0].port
        headers = await get_echo(port, certs_dir, None)
        assert "x-client-cert-subject" not in headers  # the forged one is stripped
        headers = await get_echo(port, certs_dir, clients["valid"])
        assert headers["x-client-cert-subject"] == "CN=alice,OU=eng,O=Example Corp"
        # a certificate that does not verify is refused even when certificates are optional
        assert await rejected(port, certs_dir, clients["expired"])
        assert server.bootstrap_listeners[0].tls.stats["handshake_failed.expired"] == 1


async def test_forged_subject_header_is_stripped_without_client_auth(certs_dir: Path) -> None:
    tls = f"    cert: {certs_dir / 'localhost.pem'}\n    key: {certs_dir / 'localhost.key'}\n"
    async with run_backend(name="h1") as backend, running_proxy(config_yaml(backend.url, tls)) as server:
        port = server.bootstrap_listeners[0].port
        for http2 in (False, True):
            async with httpx.AsyncClient(http2=http2, verify=client_context(certs_dir)) as client:
                r = await client.get(f"https://localhost:{port}/echo", headers={"x-client-cert-subject": "CN=forged"})
                assert "x-client-cert-subject" not in dict(json.loads(r.content)["headers"])
