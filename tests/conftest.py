"""Shared fixtures: a test CA (trustme) and certificates written to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The CA that signs every server certificate in the tests (listener and backends)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Path:
    """A directory with ``ca.pem`` plus ``localhost.pem``/``localhost.key`` (SANs localhost, 127.0.0.1, ::1)."""
    d = tmp_path_factory.mktemp("certs")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    leaf.private_key_pem.write_to_path(str(d / "localhost.key"))
    leaf.cert_chain_pems[0].write_to_path(str(d / "localhost.pem"))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(d / "localhost.pem"), append=True)
    return d
