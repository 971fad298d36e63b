"""Client TLS helpers: context caching and certificate identity checks."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from spooky_trio.upstream import BackendTarget, UpstreamTLSError, make_client_ssl_context
from spooky_trio.upstream.tls import ClientContexts, verify_identity


def der_for(ca: trustme.CA, *identities: str) -> bytes:
    pem = ca.issue_cert(*identities).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_contexts_are_reused_by_content_not_by_path(tmp_path, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    contexts = ClientContexts()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    a = contexts.get(ca_file=str(path))
    assert a is contexts.get(ca_file=str(path), alpn=["h2"])  # unchanged file: the same object
    assert a.verify_mode == ssl.CERT_REQUIRED and a.check_hostname
    loose = contexts.get(verify=False)
    assert loose is contexts.get(verify=False) and loose is not a
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    other = trustme.CA()
    other.cert_pem.write_to_path(str(path))  # rewritten in place: same path, new trust
    b = contexts.get(ca_file=str(path))
    assert b is not a
    serials = {int(c["serialNumber"], 16) for c in b.get_ca_certs()}
    assert x509.load_pem_x509_certificate(other.cert_pem.bytes()).serial_number in serials
    assert x509.load_pem_x509_certificate(ca.cert_pem.bytes()).serial_number not in serials
    # a copy of the first CA under another path is the same trust: the first context again
    ca.cert_pem.write_to_path(str(tmp_path / "copy.pem"))
    assert contexts.get(ca_file=str(tmp_path / "copy.pem")) is a
    assert make_client_ssl_context(ca_file=str(path)) is not b  # the plain builder never caches


def test_contexts_are_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    contexts = ClientContexts(capacity=2)
    for i in range(4):
        authority = trustme.CA()
        authority.cert_pem.write_to_path(str(tmp_path / f"{i}.pem"))
        contexts.get(ca_file=str(tmp_path / f"{i}.pem"))
    assert len(contexts._contexts) == 2


def test_identity_dns_wildcard_and_ip(ca: trustme.CA) -> None:
    der = der_for(ca, "api.example.com", "*.svc.example.com", "10.0.0.7", "::1")
    for good in ("api.example.com", "API.Example.com.", "a.svc.example.com", "10.0.0.7", "::1"):
        verify_identity(der, good)
    for bad, reason in [
        ("example.com", "Hostname mismatch"),
        ("a.b.svc.example.com", "Hostname mismatch"),
        ("svc.example.com", "Hostname mismatch"),
        ("10.0.0.8", "IP address mismatch"),
    ]:
        with pytest.raises(UpstreamTLSError, match=reason):
            verify_identity(der, bad)


def test_https_target_needs_a_context() -> None:
    with pytest.raises(ValueError):
        BackendTarget(scheme="https", host="localhost", port=443)
    with pytest.raises(ValueError):
        BackendTarget(scheme="ftp", host="localhost", port=21)
    target = BackendTarget(scheme="http", host="::1", port=8080)
    assert str(target) == "http://[::1]:8080" and hash(target) == hash(BackendTarget("http", "::1", 8080))


def test_ca_dir_loads_every_pem_bundle_without_hashed_names(tmp_path, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    other = trustme.CA()
    (tmp_path / "bundles").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "bundles" / "internal.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "bundles" / "partner.crt"))
    (tmp_path / "bundles" / "README").write_text("not a certificate")
    ctx = make_client_ssl_context(ca_dir=str(tmp_path / "bundles"))
    loaded = {int(c["serialNumber"], 16) for c in ctx.get_ca_certs()}
    for authority in (ca, other):
        assert x509.load_pem_x509_certificate(authority.cert_pem.bytes()).serial_number in loaded
