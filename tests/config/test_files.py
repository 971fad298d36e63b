"""check_files: certificates, keys, SAN coverage and CA bundles, with trustme-made files."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from spooky_trio.config import Config, check_files
from tests.config.helpers import line_of, load

POOL = """\
upstream:
  api:
    route: {path_prefix: /}
    backends: [{id: a, address: "https://api.internal"}]
"""


def make_config(tls_block: str, extra: str = "") -> tuple[Config, str]:
    text = "listen:\n  address: 127.0.0.1\n  tls:\n" + tls_block + POOL + extra
    return load(text), text


@pytest.fixture(scope="module")
def wildcard_dir(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Path:
    """``wild.pem``/``wild.key`` for ``*.example.com``; ``other.key`` matches no certificate here."""
    d = tmp_path_factory.mktemp("wild")
    leaf = ca.issue_cert("*.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(d / "wild.pem"))
    leaf.private_key_pem.write_to_path(str(d / "wild.key"))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(d / "other.key"))
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "empty-ca-dir").mkdir()
    return d


def test_all_files_ok(certs_dir: Path, wildcard_dir: Path) -> None:
    config, _ = make_config(
        f"    cert: {certs_dir / 'localhost.pem'}\n"
        f"    key: {certs_dir / 'localhost.key'}\n"
        "    certificates:\n"
        f"      - {{server_name: localhost, cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}\n"
        f"      - {{server_name: 127.0.0.1, cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}\n"
        f"      - {{server_name: api.example.com, cert: {wildcard_dir / 'wild.pem'}, key: {wildcard_dir / 'wild.key'}}}\n"
        f"    client_auth: {{enabled: true, ca_file: {certs_dir / 'ca.pem'}}}\n",
        f"upstream_tls: {{ca_file: {certs_dir / 'ca.pem'}, ca_dir: {certs_dir}}}\n",
    )
    assert check_files(config) == []


def test_missing_files_are_reported_with_key_path_and_line(tmp_path: Path) -> None:
    config, text = make_config(
        f"    cert: {tmp_path / 'nope.pem'}\n    key: {tmp_path / 'nope.key'}\n"
        f"    client_auth: {{enabled: true, ca_file: {tmp_path / 'ca.pem'}}}\n",
        f"upstream_tls:\n  ca_dir: {tmp_path / 'cas'}\n",
    )
    issues = {i.path: i for i in check_files(config)}
    assert set(issues) == {"listen.tls.cert", "listen.tls.key", "listen.tls.client_auth.ca_file", "upstream_tls.ca_dir"}
    assert "file not found" in issues["listen.tls.cert"].message
    assert str(tmp_path / "nope.pem") in issues["listen.tls.cert"].message
    assert issues["listen.tls.cert"].line == line_of(text, "nope.pem")
    assert issues["listen.tls.key"].line == line_of(text, "nope.key")
    assert issues["upstream_tls.ca_dir"].line == line_of(text, "ca_dir")


def test_relative_paths_resolve_from_cwd(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(certs_dir)
    config, _ = make_config("    cert: localhost.pem\n    key: localhost.key\n")
    assert check_files(config) == []
    monkeypatch.chdir(certs_dir.parent)
    (issue, _key_issue) = check_files(config)
    assert "relative paths are resolved from" in issue.message


def test_server_name_not_covered(certs_dir: Path) -> None:
    config, text = make_config(
        "    certificates:\n"
        f"      - server_name: www.example.org\n        cert: {certs_dir / 'localhost.pem'}\n"
        f"        key: {certs_dir / 'localhost.key'}\n"
    )
    (issue,) = check_files(config)
    assert issue.path == "listen.tls.certificates[0].server_name"
    assert "not covered" in issue.message
    assert issue.line == line_of(text, "www.example.org")


@pytest.mark.parametrize(
    ("server_name", "covered"),
    [("api.example.com", True), ("API.Example.com", True), ("example.com", False), ("a.b.example.com", False)],
)
def test_wildcard_san_coverage(wildcard_dir: Path, server_name: str, covered: bool) -> None:
    config, _ = make_config(
        "    certificates:\n"
        f"      - {{server_name: {server_name}, cert: {wildcard_dir / 'wild.pem'}, key: {wildcard_dir / 'wild.key'}}}\n"
    )
    issues = check_files(config)
    assert (issues == []) is covered, issues


def test_key_does_not_match_certificate(certs_dir: Path, wildcard_dir: Path) -> None:
    config, _ = make_config(f"    cert: {certs_dir / 'localhost.pem'}\n    key: {wildcard_dir / 'other.key'}\n")
    (issue,) = check_files(config)
    assert issue.path == "listen.tls.key"
    assert "does not match" in issue.message


def test_unparsable_files(certs_dir: Path, wildcard_dir: Path) -> None:
    garbage = wildcard_dir / "garbage.pem"
    config, _ = make_config(
        f"    cert: {garbage}\n    key: {garbage}\n",
        f"upstream_tls: {{ca_file: {garbage}, ca_dir: {wildcard_dir / 'empty-ca-dir'}}}\n",
    )
    issues = {i.path: i.message for i in check_files(config)}
    assert "does not contain a PEM certificate" in issues["listen.tls.cert"]
    assert "does not contain a PEM private key" in issues["listen.tls.key"]
    assert "does not contain a PEM certificate" in issues["upstream_tls.ca_file"]
    assert "no readable PEM certificates" in issues["upstream_tls.ca_dir"]


def test_pool_tls_and_listeners_are_checked(certs_dir: Path, tmp_path: Path) -> None:
    text = (
        "listeners:\n"
        f"  - {{address: 127.0.0.1, port: 1443, tls: {{cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}}}\n"
        f"  - {{address: 127.0.0.1, port: 2443, tls: {{cert: {tmp_path / 'x.pem'}, key: {certs_dir / 'localhost.key'}}}}}\n"
        "upstream:\n"
        "  api:\n"
        "    route: {path_prefix: /}\n"
        f"    tls: {{ca_file: {tmp_path / 'pool-ca.pem'}, ca_dir: {certs_dir}}}\n"
        "    backends: [{id: a, address: 'https://api.internal'}]\n"
    )
    issues = {i.path: i for i in check_files(load(text))}
    assert set(issues) == {"listeners[1].tls.cert", "upstream.api.tls.ca_file"}
    assert issues["listeners[1].tls.cert"].line == 3
    assert issues["upstream.api.tls.ca_file"].line == 7
