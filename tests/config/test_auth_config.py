"""``upstream.<pool>.auth``: Spooky's examples load, every error of spooky-head.md section 1
is reported with its key path and line, and the extension keys' rules (extensions.md
sections 4 and 7); no message quotes a secret."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spooky_trio.config import check_files
from spooky_trio.config.schema_auth import REDACTED
from tests.config.helpers import LISTEN, errors, issue_at, line_of, load


def with_auth(auth: str) -> str:
    return LISTEN + textwrap.dedent(f"""\
        upstream:
          api:
            route: {{path_prefix: /api}}
            backends: [{{id: a, address: "http://127.0.0.1:8080"}}]
            auth:
        """) + textwrap.indent(textwrap.dedent(auth).strip("\n"), "      ") + "\n"


def test_spooky_examples_load() -> None:
    one = load(with_auth("api_key: {keys: [k1, k2]}")).upstream["api"].auth
    assert one is not None and one.api_key is not None
    assert one.api_key.header_name == "x-api-key" and one.api_key.keys == ["k1", "k2"]
    two = load(with_auth("jwt: {secret: s3cret, audience: edge}\nrequired_scopes: [read]\nrequired_roles: [admin]")).upstream["api"].auth
    assert two is not None and two.jwt is not None
    assert (two.jwt.secret, two.jwt.audience, two.jwt.issuer, two.jwt.clock_skew_secs) == ("s3cret", "edge", None, 30)
    assert two.jwt.effective_algorithms() == ("HS256",) and two.insufficient_scope_status == 401
    three = load(with_auth("""
        external_auth:
          kind: http
          endpoint: "http://127.0.0.1:9000/check"
          request_headers: [{name: x-auth-static, value: "1"}]
          response_header_allowlist: [x-user-id, x-auth-reason]
        """)).upstream["api"].auth
    assert three is not None and three.external_auth is not None
    ext = three.external_auth
    assert (ext.kind, ext.timeout_ms, ext.failure_mode, ext.fail_open) == ("http", 1000, "fail_closed", False)
    four = load(with_auth('external_auth: {kind: oidc, issuer_url: "https://issuer.example.com", client_id: edge, scopes: [read]}'))
    oidc = four.upstream["api"].auth.external_auth  # type: ignore[union-attr]
    assert oidc is not None and (oidc.kind, oidc.client_id, oidc.scopes) == ("oidc", "edge", ["read"])


@pytest.mark.parametrize(
    ("auth", "path", "message"),
    [
        ("api_key: {header_name: ' ', keys: [k]}", "api_key.header_name", "must be an HTTP header name"),
        ("api_key: {header_name: 'x key', keys: [k]}", "api_key.header_name", "must be an HTTP header name"),
        ("api_key: {keys: []}", "api_key.keys", "must list at least one key"),
        ("api_key: {}", "api_key.keys", "must list at least one key"),
        ("api_key: {keys: [k, '  ']}", "api_key.keys[1]", "must not be blank"),
        ("api_key: {keys: [sekrit, ' sekrit ']}", "api_key.keys[1]", "duplicates keys[0]"),
        ("jwt: {}", "jwt.secret", "required"),
        ("jwt: {secret: '  '}", "jwt.secret", "must not be blank"),
        ("jwt: {secret: s, issuer: ' '}", "jwt.issuer", "must not be blank"),
        ("jwt: {secret: s, audience: ''}", "jwt.audience", "must not be blank"),
        ("jwt: {secret: s, clock_skew_secs: -1}", "jwt.clock_skew_secs", "must be >= 0"),
        ("{jwt: {secret: s}, required_scopes: [read, ' ']}", "required_scopes[1]", "must not be blank"),
        ("required_roles: [admin]", "required_roles", "needs auth.jwt"),
        ("{api_key: {keys: [k]}, external_auth: {kind: http, endpoint: 'http://a/'}}", "external_auth", "cannot be combined"),
        ("external_auth: {kind: http}", "external_auth.endpoint", "required when kind is http"),
        ("external_auth: {kind: http, endpoint: 'ftp://a/'}", "external_auth.endpoint", "http:// or https://"),
        ("external_auth: {kind: http, endpoint: '/check'}", "external_auth.endpoint", "http:// or https://"),
        ("external_auth: {kind: http, endpoint: 'http:///check'}", "external_auth.endpoint", "no host"),
        ("external_auth: {kind: http, endpoint: 'http://a/', request_headers: [{name: 'a b', value: v}]}",
         "external_auth.request_headers[0].name", "must be an HTTP header name"),
        ("external_auth: {kind: http, endpoint: 'http://a/', request_headers: [{name: X-A, value: v}, {name: x-a, value: w}]}",
         "external_auth.request_headers[1].name", "duplicates request_headers[0]"),
        ("external_auth: {kind: http, endpoint: 'http://a/', request_headers: [{name: x-a, value: \"a\\nb\"}]}",
         "external_auth.request_headers[0].value", "control characters"),
        ("external_auth: {kind: http, endpoint: 'http://a/', response_header_allowlist: [x-a, X-A]}",
         "external_auth.response_header_allowlist[1]", "duplicates"),
        ("external_auth: {kind: http, endpoint: 'http://a/', response_header_allowlist: ['']}",
         "external_auth.response_header_allowlist[0]", "must be an HTTP header name"),
        ("external_auth: {kind: http, endpoint: 'http://a/', timeout_ms: 0}", "external_auth.timeout_ms", "must be > 0"),
        ("external_auth: {kind: http, endpoint: 'http://a/', failure_mode: fail-open}", "external_auth.failure_mode", "did you mean 'fail_open'"),
        ("external_auth: {kind: HTTP, endpoint: 'http://a/'}", "external_auth.kind", "must be one of http, oidc (exact spelling"),
        ("external_auth: {kind: http, endpoint: 'http://a/', client_id: x}", "external_auth.client_id", "only allowed with kind: oidc"),
        ("external_auth: {kind: oidc, client_id: x}", "external_auth.issuer_url", "needs discovery_url or issuer_url"),
        ("external_auth: {kind: oidc, client_id: x, issuer_url: ' ', discovery_url: ''}", "external_auth.issuer_url", "needs discovery_url"),
        ("external_auth: {kind: oidc, client_id: x, issuer_url: 'http://idp/'}", "external_auth.issuer_url", "https://"),
        ("external_auth: {kind: oidc, client_id: x, discovery_url: 'http://127.0.0.1/d'}", "external_auth.discovery_url", "https://"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/'}", "external_auth.client_id", "required when kind is oidc"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: ' '}", "external_auth.client_id", "must not be blank"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, client_secret: ''}", "external_auth.client_secret", "must not be blank"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, audience: ' '}", "external_auth.audience", "must not be blank"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, scopes: [' ']}", "external_auth.scopes[0]", "must not be blank"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, response_header_allowlist: [x-a]}",
         "external_auth.response_header_allowlist", "must be empty"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, endpoint: 'https://a/'}", "external_auth.endpoint", "only allowed with kind: http"),
        # extension keys
        ("jwt: {jwks_uri: 'http://idp.example/jwks'}", "jwt.jwks_uri", "loopback"),
        ("jwt: {jwks_uri: 'ftp://idp.example/jwks'}", "jwt.jwks_uri", "http:// or https://"),
        ("jwt: {jwks_uri: 'https://idp/jwks', algorithms: [none]}", "jwt.algorithms[0]", "never accepted"),
        ("jwt: {jwks_uri: 'https://idp/jwks', algorithms: [HS256]}", "jwt.algorithms[0]", "needs jwt.secret"),
        ("jwt: {secret: s, algorithms: [RS256]}", "jwt.algorithms[0]", "needs jwt.jwks_uri"),
        ("jwt: {secret: s, algorithms: [HS1]}", "jwt.algorithms[0]", "unsupported algorithm"),
        ("jwt: {secret: s, algorithms: []}", "jwt.algorithms", "at least one"),
        ("jwt: {secret: s, ca_file: /ca.pem}", "jwt.ca_file", "only used with jwks_uri"),
        ("jwt: {jwks_uri: 'https://idp/jwks', jwks_min_refresh_secs: 0}", "jwt.jwks_min_refresh_secs", "must be >= 1"),
        ("jwt: {jwks_uri: 'https://idp/jwks', jwks_cache_secs: 0}", "jwt.jwks_cache_secs", "must be >= 1"),
        ("jwt: {jwks_uri: 'https://idp/jwks', jwks_timeout_ms: 0}", "jwt.jwks_timeout_ms", "must be > 0"),
        ("jwt: {secret: '-----BEGIN PUBLIC KEY-----\\nMFkw\\n-----END PUBLIC KEY-----'}", "jwt.secret", "is a public key"),
        ("forward_claims: {sub: x-user-id}", "forward_claims", "needs auth.jwt"),
        ("{jwt: {secret: s}, forward_claims: {sub: 'x user'}}", "forward_claims.sub", "must be an HTTP header name"),
        ("{jwt: {secret: s}, forward_claims: {sub: Authorization}}", "forward_claims.sub", "never from a claim"),
        ("{jwt: {secret: s}, forward_claims: {sub: x-a, tid: X-A}}", "forward_claims.tid", "already used"),
        ("{jwt: {secret: s}, insufficient_scope_status: 402}", "insufficient_scope_status", "must be 401 or 403"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, client_secret: s, client_secret_file: /f}",
         "external_auth.client_secret_file", "not both"),
        ("external_auth: {kind: oidc, issuer_url: 'https://idp/', client_id: x, introspection_cache_secs: -1}",
         "external_auth.introspection_cache_secs", "must be >= 0"),
    ],
)
def test_errors(auth: str, path: str, message: str) -> None:
    text = with_auth(auth)
    issue = issue_at(errors(text), f"upstream.api.auth.{path}")
    assert message in issue.message
    assert issue.line is not None and issue.line >= line_of(text, "auth:")


def test_messages_never_quote_a_secret() -> None:
    text = with_auth("{api_key: {keys: [sekrit-1, sekrit-1, 12345]}, jwt: {secret: 987654}}")
    issues = errors(text)
    rendered = "\n".join(str(issue) for issue in issues)
    assert "sekrit" not in rendered and "12345" not in rendered and "987654" not in rendered
    assert "expected a string, got an integer" in rendered
    config = load(with_auth("{api_key: {keys: [sekrit]}, jwt: {secret: hush}}"))
    assert "sekrit" not in repr(config) and "hush" not in repr(config) and repr(REDACTED) in repr(config)


def test_check_files_reads_auth_ca_and_secret_files(tmp_path: Path, certs_dir: Path) -> None:
    empty = tmp_path / "empty-secret"
    empty.write_text("  \n")
    config = load(with_auth(f"""
        external_auth: {{kind: oidc, issuer_url: 'https://idp/', client_id: x, client_secret_file: "{empty}",
                         ca_file: "{tmp_path / 'missing.pem'}"}}
        """))
    issues = {issue.path: issue.message for issue in check_files(config) if issue.path.startswith("upstream")}
    assert "empty" in issues["upstream.api.auth.external_auth.client_secret_file"]
    assert "file not found" in issues["upstream.api.auth.external_auth.ca_file"]
    good = load(with_auth(f"jwt: {{jwks_uri: 'https://idp/jwks', ca_file: \"{certs_dir / 'ca.pem'}\"}}"))
    assert not [i for i in check_files(good) if i.path.startswith("upstream")]


def test_check_command_rejects_an_empty_key_list(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(with_auth("api_key: {keys: []}"))
    result = subprocess.run([sys.executable, "-m", "spooky_trio", "check", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "upstream.api.auth.api_key.keys" in result.stderr and "Traceback" not in result.stderr
