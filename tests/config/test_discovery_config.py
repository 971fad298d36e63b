"""``upstream.<pool>.discovery`` (ext): each broken rule at its key path and line; what is
valid loads with its defaults; the etcd files are checked; the password is never shown.
And the backends a source names outside the config (``config/backend_entries.py``) are
checked like config backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import check_files
from spooky_trio.config.backend_entries import (
    BackendEntry,
    EntryError,
    parse_document,
    parse_entry,
)
from spooky_trio.config.schema_discovery import BackendDefaults
from tests.config.helpers import LISTEN, errors, issue_at, line_of, load


def pool(discovery: str, backends: str = "") -> str:
    return LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n" + backends + f"    discovery: {discovery}\n"


ETCD = "{kind: etcd, endpoints: ['http://127.0.0.1:2379'], prefix: /spooky/api/%s}"

# (config text, issue path, text of the line the issue must point at, message fragment)
CASES = [
    (pool("{kind: consul}"), "upstream.api.discovery.kind", "kind: consul", "file, dns_srv, etcd"),
    (pool("{kind: File, path: /x}"), "upstream.api.discovery.kind", "kind: File", "exact spelling"),
    (pool("{kind: file}"), "upstream.api.discovery.path", "kind: file", "required when kind is file"),
    (pool("{kind: file, path: /x, name: _a._tcp.example}"), "upstream.api.discovery.name", "name: _a",
     "only used with kind dns_srv"),
    (pool("{kind: dns_srv}"), "upstream.api.discovery.name", "kind: dns_srv", "required when kind is dns_srv"),
    (pool("{kind: dns_srv, name: 'not a name'}"), "upstream.api.discovery.name", "not a name", "invalid SRV name"),
    (pool("{kind: dns_srv, name: _a._tcp.example, scheme: h3}"), "upstream.api.discovery.scheme", "scheme: h3",
     "http or https"),
    (pool("{kind: dns_srv, name: _a._tcp.example, path: /x}"), "upstream.api.discovery.path", "path: /x",
     "only used with kind file"),
    (pool("{kind: etcd, prefix: /p/}"), "upstream.api.discovery.endpoints", "kind: etcd", "at least one etcd endpoint"),
    (pool("{kind: etcd, endpoints: ['http://127.0.0.1:2379']}"), "upstream.api.discovery.prefix", "kind: etcd",
     "required when kind is etcd"),
    (pool("{kind: etcd, endpoints: ['http://127.0.0.1:2379'], prefix: ' '}"), "upstream.api.discovery.prefix",
     "prefix: ' '", "required when kind is etcd"),
    (pool("{kind: etcd, endpoints: ['127.0.0.1:2379'], prefix: /p/}"), "upstream.api.discovery.endpoints[0]",
     "endpoints", "http:// or https://"),
    (pool("{kind: etcd, endpoints: ['http://127.0.0.1'], prefix: /p/}"), "upstream.api.discovery.endpoints[0]",
     "endpoints", "give the port"),
    (pool("{kind: etcd, endpoints: ['http://127.0.0.1:2379/v3'], prefix: /p/}"), "upstream.api.discovery.endpoints[0]",
     "endpoints", "no path"),
    (pool(ETCD % ", username: u"), "upstream.api.discovery.username", "username: u", "needs password"),
    (pool(ETCD % ", password: pw"), "upstream.api.discovery.password", "password: pw", "needs username"),
    (pool(ETCD % ", username: u, password: pw, password_file: /f"), "upstream.api.discovery.password_file",
     "password_file", "one place"),
    (pool(ETCD.replace("http:", "https:") % ", cert_file: /c.pem"), "upstream.api.discovery.cert_file", "cert_file",
     "go together"),
    (pool(ETCD % ", ca_file: /ca.pem"), "upstream.api.discovery.ca_file", "ca_file", "https://"),
    (pool("{kind: file, path: /x, username: u, password: pw}"), "upstream.api.discovery.username", "username: u",
     "only used with kind etcd"),
    (pool("{kind: file, path: /x, refresh_ms: 10}"), "upstream.api.discovery.refresh_ms", "refresh_ms: 10", "must be >= 100"),
    (pool("{kind: file, path: /x, timeout_ms: 0}"), "upstream.api.discovery.timeout_ms", "timeout_ms: 0", "must be > 0"),
    (pool("{kind: file, path: /x, backend_defaults: {weight: 0}}"), "upstream.api.discovery.backend_defaults.weight",
     "weight: 0", "must be >= 1"),
    (pool("{kind: file, path: /x, backend_defaults: {health_check: {path: health}}}"),
     "upstream.api.discovery.backend_defaults.health_check.path", "path: health", "starting with '/'"),
    (pool("{kind: file, path: /x, weight: 5}"), "upstream.api.discovery.weight", "weight: 5", "unknown key"),
    (LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n", "upstream.api.backends", "api:",
     "at least one backend (or a discovery source)"),
]


@pytest.mark.parametrize(("text", "path", "needle", "fragment"), CASES, ids=[f"{c[1]}:{c[3]}" for c in CASES])
def test_rule(text: str, path: str, needle: str, fragment: str) -> None:
    issue = issue_at(errors(text), path)
    assert fragment in issue.message, issue
    assert issue.line == line_of(text, needle), str(issue)


def test_each_kind_loads_with_its_defaults_and_backends_may_be_omitted() -> None:
    config = load(pool("{kind: dns_srv, name: _api._tcp.svc.example}"))
    api = config.upstream["api"]
    assert api.backends == [] and api.discovery is not None
    d = api.discovery
    assert (d.kind, d.name, d.scheme, d.refresh_ms, d.timeout_ms) == ("dns_srv", "_api._tcp.svc.example", "https", 30000, 2000)
    assert d.backend_defaults == BackendDefaults(weight=100, health_check=None)
    seeded = load(pool("{kind: file, path: backends.yaml, backend_defaults: {weight: 7, health_check: {interval: 500}}}",
                       "    backends: [{id: seed, address: 'http://127.0.0.1:9'}]\n"))
    defaults = seeded.upstream["api"].discovery.backend_defaults  # type: ignore[union-attr]
    assert defaults.weight == 7 and defaults.health_check is not None and defaults.health_check.interval == 500
    assert [b.id for b in seeded.upstream["api"].backends] == ["seed"]
    etcd = load(pool(ETCD % ", username: spooky, password: hunter2, refresh_ms: 100"))
    assert etcd.upstream["api"].discovery.endpoints == ["http://127.0.0.1:2379"]  # type: ignore[union-attr]


def test_the_etcd_password_is_never_shown() -> None:
    config = load(pool(ETCD % ", username: spooky, password: hunter2"))
    assert "hunter2" not in repr(config) and repr(config.upstream["api"].discovery.password) == "'***'"  # type: ignore[union-attr]
    assert all("hunter2" not in str(issue) for issue in errors(pool(ETCD % ", password: hunter2")))
    assert all("hunter2" not in str(issue) for issue in errors(pool(ETCD % ", username: u, password: [hunter2]")))


def test_the_etcd_files_are_checked(tmp_path: Path, certs_dir: Path) -> None:
    https = "{kind: etcd, endpoints: ['https://127.0.0.1:2379'], prefix: /p/, %s}"
    missing = load(pool(https % f"username: u, password_file: {tmp_path}/none, ca_file: {tmp_path}/none.pem, "
                                f"cert_file: {tmp_path}/c.pem, key_file: {tmp_path}/k.pem"))
    found = {issue.path: issue.message for issue in check_files(missing) if "discovery" in issue.path}
    assert "No such file" in found["upstream.api.discovery.password_file"]
    assert "cannot load CA certificates" in found["upstream.api.discovery.ca_file"]
    assert "client certificate" in found["upstream.api.discovery.cert_file"]
    (tmp_path / "pw").write_text("s3cret\n")
    good = load(pool(https % f"username: u, password_file: {tmp_path}/pw, ca_file: {certs_dir}/ca.pem, "
                             f"cert_file: {certs_dir}/localhost.pem, key_file: {certs_dir}/localhost.key"))
    assert [issue for issue in check_files(good) if "discovery" in issue.path] == []


def test_a_discovered_pools_tls_policy_is_checked_at_load(tmp_path: Path) -> None:
    """Its source may name https backends at any time: a missing CA file is a load error,
    not a failed refresh when the first such backend arrives."""
    text = pool("{kind: dns_srv, name: _api._tcp.example.com}").replace(
        "    discovery:", f"    tls: {{ca_file: {tmp_path}/none.pem}}\n    discovery:")
    found = {issue.path: issue.message for issue in check_files(load(text))}
    assert "file not found" in found["upstream.api.tls.ca_file"], found


def test_an_https_admin_backend_needs_a_usable_tls_policy(tmp_path: Path, certs_dir: Path) -> None:
    """A pool whose config has only http backends had its TLS policy left unread at load (as
    Spooky): the admin API reads it before an https backend joins, answering 400."""
    from types import SimpleNamespace

    from spooky_trio.core.state import StateStore
    from spooky_trio.serving.admin_upstreams import _tls_policy_error

    def server_and_pool(ca_file: str) -> tuple[object, object]:
        config = load(LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n"
                      f"    tls: {{ca_file: {ca_file}}}\n    backends: [{{id: a, address: 'http://127.0.0.1:9'}}]\n")
        return SimpleNamespace(state=StateStore(), generation=SimpleNamespace(config=config)), config.upstream["api"]

    server, api = server_and_pool(f"{tmp_path}/none.pem")
    assert "cannot be used for an https backend" in (_tls_policy_error(server, api, "https://127.0.0.1:8443") or "")  # type: ignore[arg-type]
    assert _tls_policy_error(server, api, "http://127.0.0.1:8080") is None  # type: ignore[arg-type]
    server, api = server_and_pool(f"{certs_dir}/ca.pem")
    assert _tls_policy_error(server, api, "https://127.0.0.1:8443") is None  # type: ignore[arg-type]


def test_an_http3_pool_refuses_cleartext_srv_targets() -> None:
    text = pool("{kind: dns_srv, name: _api._tcp.example.com, scheme: http}").replace(
        "    discovery:", "    upstream_protocol: h3\n    discovery:")
    assert "needs https:// backends" in issue_at(errors(text), "upstream.api.discovery.scheme").message


def test_an_admin_backend_must_suit_the_pools_protocol(certs_dir: Path) -> None:
    from types import SimpleNamespace

    from spooky_trio.core.state import StateStore
    from spooky_trio.serving.admin_upstreams import _tls_policy_error

    config = load(LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n    upstream_protocol: h3\n"
                  f"    tls: {{ca_file: {certs_dir}/ca.pem}}\n    backends: [{{id: a, address: 'https://127.0.0.1:9'}}]\n")
    server = SimpleNamespace(state=StateStore(), generation=SimpleNamespace(config=config))
    api = config.upstream["api"]
    assert "needs https:// backends" in (_tls_policy_error(server, api, "http://127.0.0.1:8080") or "")  # type: ignore[arg-type]
    assert _tls_policy_error(server, api, "https://127.0.0.1:8443") is None  # type: ignore[arg-type]


# -- backends named by a source (a file, an etcd value, an admin API body) --


def test_a_file_holds_a_list_or_a_backends_mapping_in_yaml_or_json() -> None:
    listed = parse_document("- {id: a, address: 'http://127.0.0.1:1', weight: 3}\n- id: b\n  address: 'b.internal:443'\n")
    assert listed == [BackendEntry("a", "http://127.0.0.1:1", 3), BackendEntry("b", "b.internal:443")]
    mapped = parse_document('{"backends": [{"id": "a", "address": "http://127.0.0.1:1", "health_check": {"path": "/hc"}}]}')
    assert mapped[0].health_check is not None and mapped[0].health_check.path == "/hc"
    assert parse_document("") == [] and parse_document("backends: []") == []
    # the pool's defaults fill in what an entry leaves out
    defaults = BackendDefaults(weight=9)
    assert [e.resolve(defaults).weight for e in listed] == [3, 9]


def test_a_bad_file_reports_every_entry_with_its_line() -> None:
    with pytest.raises(EntryError) as info:
        parse_document("- {id: a, address: 'http://127.0.0.1:1', weight: 0}\n"
                       "- {id: b, address: 'ftp://x'}\n"
                       "- {id: a, address: 'http://127.0.0.1:2'}\n"
                       "- {address: 'http://127.0.0.1:3', wieght: 2}\n")
    assert [str(issue) for issue in info.value.issues] == [
        "[0].weight: line 1 col 50: must be >= 1 (got 0)",
        "[1].address: line 2 col 20: unsupported scheme 'ftp' in 'ftp://x': use http:// or https://",
        "[2].id: line 3 col 8: duplicate backend id 'a' (also [0])",
        "[3].wieght: line 4 col 43: unknown key 'wieght' (did you mean 'weight'?)",
    ]
    for text in ("[", "backends: {a: 1}", "other: []", "- 1"):
        with pytest.raises(EntryError):
            parse_document(text)


def test_one_value_takes_its_id_from_the_key() -> None:
    assert parse_entry({"address": "http://h:2", "weight": 5}, backend_id="k") == BackendEntry("k", "http://h:2", 5)
    assert parse_entry({"id": "k", "address": "http://h:2"}, backend_id="k").weight is None
    for value in ({"address": "http://h:2", "weight": "5"}, {"id": "other", "address": "http://h:2"}, {"weight": 1},
                  ["http://h:2"], {"address": "http://h:2", "extra": 1}):
        with pytest.raises(EntryError):
            parse_entry(value, backend_id="k")
    with pytest.raises(EntryError, match="control characters"):
        parse_entry({"address": "http://h:2"}, backend_id="a\nb")
