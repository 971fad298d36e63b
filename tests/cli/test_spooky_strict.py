"""``spooky-trio check --spooky-strict``: one line for each thing Spooky would not accept.

The extension keys are the schema fields marked ``EXT`` (config/markers.py): the test
builds a config writing every marked key the schema has, so a key a later feature marks is
covered without editing this file (it needs a sample value in SAMPLES).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from spooky_trio.config import load_config_text
from spooky_trio.config.portability import PORTABILITY_RULES, spooky_strict_issues
from spooky_trio.config.schema_walk import schema_keys
from tests.config.helpers import line_of

REPO = Path(__file__).resolve().parents[2]

#: a valid YAML value for each extension key (by reference path)
SAMPLES = {
    "performance.backend_dns_nameservers": "[127.0.0.1]",
    "resilience.protocol.normalize_path": "false",
    "resilience.protocol.merge_slashes": "false",
    "resilience.protocol.escaped_slashes": "reject",
    "resilience.protocol.forward_normalized_path": "false",
    "resilience.rate_limit_store": "{}",
    "resilience.rate_limit_store.kind": "memory",
    "resilience.rate_limit_store.url": "'redis://:pw@127.0.0.1:6379/0'",
    "resilience.rate_limit_store.password_file": "/etc/spooky/redis-password",
    "resilience.rate_limit_store.ca_file": "/etc/spooky/redis-ca.pem",
    "resilience.rate_limit_store.key_prefix": "'edge:rl:'",
    "resilience.rate_limit_store.timeout_ms": "50",
    "resilience.rate_limit_store.failure_mode": "fail_open",
    "resilience.rate_limit_headers": "true",
    "performance.h3_pool_max_connections_per_backend": "4",
    "performance.h3_pool_max_streams_per_connection": "50",
    "performance.h3_pool_idle_timeout_ms": "30000",
    "performance.quic_worker_steering": "handover",
}
#: keys of the listener: the line to add to config_text's ``listen`` block
LISTEN_SAMPLES = {"listen.quic_lb": "  quic_lb: {server_id: '0x0a'}\n"}
for _key, _value in (("config_id", "1"), ("nonce_length", "6"), ("key_file", "/etc/spooky/lb.key"),
                     ("self_encode_length", "true")):  # server_id is required beside any quic_lb key
    LISTEN_SAMPLES[f"listen.quic_lb.{_key}"] = "  quic_lb: {server_id: '0x0a', %s: %s}\n" % (_key, _value)
LISTEN_SAMPLES["listen.quic_lb.server_id"] = LISTEN_SAMPLES["listen.quic_lb"]
_PLUGIN = "plugins:\n  - {name: p, object: 'tests.plugins.samples:Noop'%s}\n"
#: keys inside a list: the whole tail to append (the key is reported at entry [0])
TAIL_SAMPLES = {
    "resilience.scoped_rate_limits[].store":
        "resilience:\n  scoped_rate_limits:\n    - {name: r, scope: client, requests_per_sec: 1, burst: 1, store: memory}\n",
    # plugins (issue 20): an entry (its name and object beside the key), and a third pool naming it
    "plugins": _PLUGIN % "",
    "plugins[].name": _PLUGIN % "",
    "plugins[].object": _PLUGIN % "",
    "plugins[].entry_point": "plugins:\n  - {name: p, entry_point: tenant-header}\n",
    "plugins[].config": _PLUGIN % ", config: {tag: x}",
    "plugins[].plugin_timeout_ms": _PLUGIN % ", plugin_timeout_ms: 50",
    "upstream.<pool>.filters": "  ext:\n    route: {path_prefix: /ext}\n    backends: [{id: a, address: 'http://127.0.0.1:8082'}]\n"
                               "    filters: [p]\n" + _PLUGIN % "",
}

#: pool keys: the ``auth`` block (with whatever the key needs beside it) of a third pool
_JWT = "      jwt: {secret: s3cret, %s}\n"
_OIDC = "      external_auth: {kind: oidc, issuer_url: 'https://idp.test', client_id: c, %s}\n"
POOL_SAMPLES = {
    "upstream.<pool>.auth.jwt.jwks_uri": "      jwt: {jwks_uri: 'https://idp.test/jwks'}\n",
    "upstream.<pool>.auth.jwt.algorithms": _JWT % "algorithms: [HS256]",
    "upstream.<pool>.auth.jwt.jwks_cache_secs": _JWT % "jwks_cache_secs: 60",
    "upstream.<pool>.auth.jwt.jwks_min_refresh_secs": _JWT % "jwks_min_refresh_secs: 60",
    "upstream.<pool>.auth.jwt.jwks_timeout_ms": _JWT % "jwks_timeout_ms: 500",
    "upstream.<pool>.auth.jwt.ca_file": "      jwt: {jwks_uri: 'https://idp.test/jwks', ca_file: CA}\n",
    "upstream.<pool>.auth.external_auth.ca_file": "      external_auth: {kind: http, endpoint: 'https://auth.test/check', ca_file: CA}\n",
    "upstream.<pool>.auth.external_auth.client_secret_file": _OIDC % "client_secret_file: CA",
    "upstream.<pool>.auth.external_auth.discovery_cache_secs": _OIDC % "discovery_cache_secs: 60",
    "upstream.<pool>.auth.external_auth.introspection_cache_secs": _OIDC % "introspection_cache_secs: 60",
    "upstream.<pool>.auth.forward_claims": (_JWT % "issuer: i") + "      forward_claims: {sub: x-user}\n",
    "upstream.<pool>.auth.insufficient_scope_status": (_JWT % "issuer: i") + "      required_scopes: [read]\n"
                                                      "      insufficient_scope_status: 403\n",
}
#: pool keys outside ``auth``: the pool-level lines of a third pool (with what the key needs)
_ETCD = "    discovery: {kind: etcd, endpoints: ['https://127.0.0.1:2379'], prefix: /spooky/ext/, %s}\n"
POOL_LEVEL_SAMPLES = {
    "upstream.<pool>.discovery": "    discovery: {kind: file, path: /etc/spooky/ext.yaml}\n",
    "upstream.<pool>.discovery.kind": "    discovery: {kind: file, path: /etc/spooky/ext.yaml}\n",
    "upstream.<pool>.discovery.path": "    discovery: {kind: file, path: /etc/spooky/ext.yaml}\n",
    "upstream.<pool>.discovery.name": "    discovery: {kind: dns_srv, name: _ext._tcp.example.com}\n",
    "upstream.<pool>.discovery.scheme": "    discovery: {kind: dns_srv, name: _ext._tcp.example.com, scheme: http}\n",
    "upstream.<pool>.discovery.endpoints": _ETCD.replace(", %s", ""),
    "upstream.<pool>.discovery.prefix": _ETCD.replace(", %s", ""),
    "upstream.<pool>.discovery.refresh_ms": _ETCD % "refresh_ms: 1000",
    "upstream.<pool>.discovery.timeout_ms": _ETCD % "timeout_ms: 500",
    "upstream.<pool>.discovery.backend_defaults": _ETCD % "backend_defaults: {}",
    "upstream.<pool>.discovery.backend_defaults.weight": _ETCD % "backend_defaults: {weight: 5}",
    "upstream.<pool>.discovery.backend_defaults.health_check": _ETCD % "backend_defaults: {health_check: {path: /hc}}",
    "upstream.<pool>.discovery.username": _ETCD % "username: spooky, password: pw",
    "upstream.<pool>.discovery.password": _ETCD % "username: spooky, password: pw",
    "upstream.<pool>.discovery.password_file": _ETCD % "username: spooky, password_file: /etc/spooky/etcd-pw",
    "upstream.<pool>.discovery.ca_file": _ETCD % "ca_file: /etc/spooky/etcd-ca.pem",
    "upstream.<pool>.discovery.cert_file": _ETCD % "cert_file: /etc/spooky/etcd.pem, key_file: /etc/spooky/etcd.key",
    "upstream.<pool>.discovery.key_file": _ETCD % "cert_file: /etc/spooky/etcd.pem, key_file: /etc/spooky/etcd.key",
    "upstream.<pool>.upstream_protocol": "    backends: [{id: a, address: 'http://127.0.0.1:8082'}]\n    upstream_protocol: h2\n",
}
#: the extension keys a sample needs beside its own (a pool sample's jwks_uri; the section
#: holding a rate_limit_store key, itself an extension key; a discovery block's kind and the
#: keys its kind requires, and what a key needs beside it; a plugins entry's list and keys; the quic_lb block and its server_id)
_NEEDED = {"upstream.ext.auth.jwt.jwks_uri", "resilience.rate_limit_store", "plugins", "plugins[0].name", "plugins[0].object",
           "plugins[0].entry_point", "listen.quic_lb", "listen.quic_lb.server_id"} | {
    f"upstream.ext.discovery{key}" for key in ("", ".kind", ".path", ".name", ".endpoints", ".prefix", ".username",
                                                ".password", ".backend_defaults", ".cert_file", ".key_file")}

#: route matchers and traffic_policy keys (extensions.md section 1): (key prefix, the third
#: pool's lines), the first prefix that starts the key gives its sample; every key of the
#: sample's block is an extension key, so those are the only other findings allowed
_M = "    route:\n      path_prefix: /ext\n      %s\n"
_TP = "    traffic_policy: %s\n"
TRAFFIC_SAMPLES = [
    ("upstream.<pool>.route.headers[].prefix", _M % "headers: [{name: x-a, prefix: a}]"),
    ("upstream.<pool>.route.headers[].suffix", _M % "headers: [{name: x-a, suffix: a}]"),
    ("upstream.<pool>.route.headers[].regex", _M % "headers: [{name: x-a, regex: 'a.*'}]"),
    ("upstream.<pool>.route.headers[].present", _M % "headers: [{name: x-a, present: true}]"),
    ("upstream.<pool>.route.headers[].invert", _M % "headers: [{name: x-a, exact: a, invert: true}]"),
    ("upstream.<pool>.route.headers", _M % "headers: [{name: x-canary, exact: '1'}]"),
    ("upstream.<pool>.route.query", _M % "query: [{name: debug, present: true}]"),
    ("upstream.<pool>.route.cookies", _M % "cookies: [{name: beta, prefix: 'on'}]"),
    ("upstream.<pool>.traffic_policy.split_key", _TP % "{split: [{pool: api, percent: 5}], split_key: 'cookie:session'}"),
    ("upstream.<pool>.traffic_policy.mirror",
     _TP % "{mirror: {pool: api, percent: 10, max_body_bytes: 1024, max_inflight: 4, timeout_ms: 500}}"),
    ("upstream.<pool>.traffic_policy.fault",
     _TP % "{fault: {delay: {fixed_ms: 10, percent: 1}, abort: {status: 503, percent: 1}, header_control: true, max_active: 5}}"),
    ("upstream.<pool>.traffic_policy.request_headers",
     _TP % "{request_headers: {set: {x-env: prod}, add: {via: spooky}, remove: [x-debug]}}"),
    ("upstream.<pool>.traffic_policy.response_headers", _TP % "{response_headers: {remove: [server]}}"),
    ("upstream.<pool>.traffic_policy.rewrite", _TP % "{rewrite: {path_prefix: /internal}}"),
    ("upstream.<pool>.traffic_policy.direct_response",
     _TP % "{direct_response: {status: 503, body: down, headers: {retry-after: '1'}}}"),
    ("upstream.<pool>.traffic_policy.redirect", _TP % "{redirect: {status: 308, location: 'https://new.example.com{uri}'}}"),
    ("upstream.<pool>.traffic_policy", _TP % "{split: [{pool: api, percent: 5}]}"),
]


def traffic_sample(dotted: str) -> str | None:
    """The third pool's lines for a route-matcher or traffic_policy key, else None."""
    return next((lines for prefix, lines in TRAFFIC_SAMPLES if dotted.startswith(prefix)), None)


def config_text(certs_dir: Path, tail: str = "") -> str:
    return f"""\
listen:
  address: 127.0.0.1
  tls:
    cert: {certs_dir / "localhost.pem"}
    key: {certs_dir / "localhost.key"}
upstream:
  api:
    route: {{path_prefix: /api}}
    backends: [{{id: a, address: "http://127.0.0.1:8080"}}]
  web:
    route: {{path_prefix: /}}
    backends: [{{id: a, address: "http://127.0.0.1:8081"}}]
""" + tail


def check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spooky_trio", "check", "--config", str(path), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


def test_a_plain_spooky_config_passes(tmp_path: Path, certs_dir: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config_text(certs_dir, "log: {level: scream, format: json}\n"))
    out = check(path, "--spooky-strict")
    assert (out.returncode, out.stdout, out.stderr) == (0, "config OK\n", "")


def test_every_finding_one_line_each_and_exit_1(tmp_path: Path, certs_dir: Path) -> None:
    text = config_text(certs_dir).replace("http://127.0.0.1:8081", "http://127.0.0.1:8080") + (
        "log: {level: Warning}\n"
        "performance:\n"
        "  backend_dns_nameservers: ['127.0.0.1:5353']\n"
        "  max_request_body_bytes: 2000000\n"
        "  quic_initial_max_stream_data: 1000000\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    plain = check(path)
    assert plain.returncode == 0 and plain.stdout == "config OK\n"  # all of it is valid here
    out = check(path, "--spooky-strict")
    assert out.returncode == 1 and out.stdout == ""
    prefix = f"{path}: not for Spooky: "
    assert out.stderr.splitlines() == [
        f"{prefix}upstream.web.backends[0].address: line {line_of(text, '8080', 2)} col 33: http://127.0.0.1:8080 is also a "
        "backend of pool 'api' (Spooky rejects a backend address in several pools)",
        f"{prefix}log.level: line {line_of(text, 'Warning')} col 14: 'Warning' is a spooky-trio spelling (Spooky: 'warn')",
        f"{prefix}performance.backend_dns_nameservers: line {line_of(text, 'nameservers')} col 3: a spooky-trio extension key "
        "(Spooky rejects it)",
        f"{prefix}performance.max_request_body_bytes: line {line_of(text, 'max_request_body')} col 27: Spooky requires <= "
        "quic_initial_max_stream_data (2000000 vs 1000000); spooky-trio streams request bodies and accepts it",
    ]


def test_every_marked_extension_key_is_reported(certs_dir: Path) -> None:
    extension = [key for key in schema_keys() if key.extension]
    assert extension, "the schema has extension keys (backend_dns_nameservers at least)"
    missing = [key.dotted for key in extension
               if key.dotted not in {**SAMPLES, **POOL_SAMPLES, **TAIL_SAMPLES, **POOL_LEVEL_SAMPLES, **LISTEN_SAMPLES} and traffic_sample(key.dotted) is None]
    assert not missing, f"give SAMPLES (or POOL_SAMPLES, TAIL_SAMPLES, POOL_LEVEL_SAMPLES, LISTEN_SAMPLES) a value for: {missing}"
    message = "a spooky-trio extension key (Spooky rejects it)"
    for key in extension:
        if key.dotted in POOL_SAMPLES:  # a third pool, continuing config_text's upstream mapping
            tail = ("  ext:\n    route: {path_prefix: /ext}\n    backends: [{id: a, address: 'http://127.0.0.1:8082'}]\n"
                    "    auth:\n" + POOL_SAMPLES[key.dotted].replace("CA", str(certs_dir / "ca.pem")))
        elif key.dotted in POOL_LEVEL_SAMPLES:
            tail = "  ext:\n    route: {path_prefix: /ext}\n" + POOL_LEVEL_SAMPLES[key.dotted]
        elif key.dotted in TAIL_SAMPLES:
            tail = TAIL_SAMPLES[key.dotted]
        elif traffic_sample(key.dotted) is not None:
            lines = traffic_sample(key.dotted) or ""
            route = "" if "route:" in lines else "    route: {path_prefix: /ext}\n"
            tail = f"  ext:\n{route}    backends: [{{id: a, address: 'http://127.0.0.1:8082'}}]\n{lines}"
        elif key.dotted in LISTEN_SAMPLES:
            tail = ""
        else:
            tail = ""
            for depth, element in enumerate(key.path[:-1]):
                tail += "  " * depth + f"{element}:\n"
            tail += "  " * (len(key.path) - 1) + f"{key.path[-1]}: {SAMPLES[key.dotted]}\n"
        text = config_text(certs_dir, tail)
        if key.dotted in LISTEN_SAMPLES:
            text = text.replace("upstream:\n", LISTEN_SAMPLES[key.dotted] + "upstream:\n", 1)
        issues = {(i.path, i.message) for i in spooky_strict_issues(load_config_text(text), text)}
        expected = key.dotted.replace("<pool>", "ext").replace("[]", "[0]")
        assert (expected, message) in issues, (key.dotted, issues)
        block = ("upstream.ext.route.", "upstream.ext.traffic_policy")  # a sample's block: all extension keys
        others = {(path, text) for path, text in issues if not path.startswith(block) or text != message}
        assert others <= {(expected, message)} | {(path, message) for path in _NEEDED}, (key.dotted, issues)


def test_the_relaxed_rules_are_silent_on_a_plain_config(certs_dir: Path) -> None:
    assert PORTABILITY_RULES
    text = config_text(certs_dir)
    assert spooky_strict_issues(load_config_text(text), text) == []
