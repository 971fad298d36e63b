"""The example configs in conf/ load unchanged (their text is checked against the reference
in tests/docs/test_configuration_reference.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import check_files, load_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_minimal_example() -> None:
    config = load_config(CONF / "spooky-minimal.yaml")
    assert config.listen.port == 9889
    assert config.upstream["default"].backends[0].parsed_address.port == 8080
    issues = {i.path: i for i in check_files(config)}
    assert set(issues) == {"listen.tls.cert", "listen.tls.key"}
    assert "/etc/spooky/certs/fullchain.pem" in issues["listen.tls.cert"].message
    assert issues["listen.tls.cert"].line == 3
    assert issues["listen.tls.key"].line == 4


def test_production_example() -> None:
    config = load_config(CONF / "spooky-production.yaml")
    api, web = config.upstream["api"], config.upstream["web"]
    assert list(config.upstream) == ["api", "web"]
    assert config.listen.port == 443
    assert config.listen.tls.client_auth.ca_file is None
    assert api.load_balancing.type == "consistent-hash"
    assert api.load_balancing.key == "header:x-tenant"
    assert api.forwarded_headers.mode == "append"
    assert [b.weight for b in api.backends] == [100, 50]
    assert api.backends[0].health_check is not None and api.backends[0].health_check.interval == 2000
    assert api.backends[0].health_check.timeout_ms == 1000
    assert web.load_balancing.type == "least-connections"
    assert web.host_policy.mode == "rewrite" and web.host_policy.host == "web.internal"
    assert config.log.level == "info" and config.log.format == "json"
    assert config.resilience.adaptive_admission.max_limit == 8192
    assert config.resilience.brownout.core_routes == ["api"]
    assert config.observability.control_api.auth_token == "replace-me"
    assert config.security.privileges.user == "spooky"
    issues = {i.path for i in check_files(config)}
    assert issues == {"listen.tls.cert", "listen.tls.key", "upstream_tls.ca_file"}


def test_dev_config(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(CONF / "dev.yaml")
    (listener,) = config.effective_listeners()
    assert (listener.address, listener.port) == ("127.0.0.1", 9889)
    assert listener.tls.cert == ".dev-certs/localhost.pem"
    assert config.upstream["demo"].backends[0].address == "http://127.0.0.1:8081"
    assert config.upstream["demo"].route.path_prefix == "/"
    assert config.log.level == "info"
    assert not config.observability.metrics.enabled and not config.observability.control_api.enabled
    # with the dev certificates in place (cwd-relative), the file check passes
    dev = certs_dir.parent / "devroot"
    (dev / ".dev-certs").mkdir(parents=True, exist_ok=True)
    for name in ("localhost.pem", "localhost.key"):
        (dev / ".dev-certs" / name).write_bytes((certs_dir / name).read_bytes())
    monkeypatch.chdir(dev)
    assert check_files(config) == []


def test_the_spooky_examples_use_no_extension() -> None:
    from spooky_trio.config.portability import spooky_strict_issues

    for name in ("spooky-minimal.yaml", "spooky-production.yaml"):
        text = (CONF / name).read_text()
        assert spooky_strict_issues(load_config(CONF / name), text) == [], name
