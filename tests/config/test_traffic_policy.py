"""Route matchers and ``traffic_policy`` (extensions.md section 1): the section's example
loads, every rule reports its key path and line, the relaxed Spooky rules (no route, no
backends) hold only where the spec allows them, and the policy is explained in words."""

from __future__ import annotations

import textwrap
from pathlib import Path

from spooky_trio.config import config_warnings, load_config_text
from spooky_trio.config.describe_traffic import describe_traffic
from spooky_trio.config.portability import spooky_strict_issues
from spooky_trio.config.validate_traffic import location_error
from tests.config.helpers import LISTEN, errors, issue_at, line_of, load

#: extensions.md section 1, whole (with the pools it names)
SECTION_1 = LISTEN + """\
upstream:
  api-canary-users:
    route:
      host: api.example.com
      path_prefix: /v1
      headers:
        - {name: x-canary, exact: "1"}
        - {name: user-agent, regex: ".*Mobile.*", invert: true}
      query:
        - {name: debug, present: true}
      cookies:
        - {name: beta, prefix: "on"}
    backends: [{id: a, address: "http://127.0.0.1:8080"}]
    traffic_policy:
      split:
        - {pool: api-v2, percent: 5.0}
      split_key: "cookie:session"
      mirror:
        pool: api-shadow
        percent: 10.0
        max_body_bytes: 65536
        max_inflight: 64
        timeout_ms: 2000
      fault:
        delay: {fixed_ms: 200, percent: 5.0}
        abort: {status: 503, percent: 1.0}
        header_control: false
        max_active: 100
      request_headers:  {set: {x-env: prod}, add: {via: spooky}, remove: [x-debug]}
      response_headers: {set: {strict-transport-security: "max-age=31536000"}, remove: [server]}
      rewrite: {path_prefix: /internal/v1}
  api-v2:
    backends: [{id: b, address: "http://127.0.0.1:8081"}]
  api-shadow:
    backends: [{id: c, address: "http://127.0.0.1:8082"}]
  maintenance:
    route: {host: old.example.com}
    traffic_policy:
      direct_response: {status: 503, body: "maintenance\\n", headers: {retry-after: "120"}}
  moved:
    route: {host: moved.example.com}
    traffic_policy:
      redirect: {status: 308, location: "https://new.example.com{path}"}
"""


def pool_text(route: str = "{path_prefix: /}", policy: str = "", backends: str = '[{id: a, address: "http://127.0.0.1:8080"}]',
              others: str = "") -> str:
    text = LISTEN + f"upstream:\n  api:\n    route: {route}\n    backends: {backends}\n"
    if policy:
        text += "    traffic_policy:\n" + textwrap.indent(textwrap.dedent(policy).strip("\n"), "      ") + "\n"
    return text + others


OTHER = '  other:\n    route: {path_prefix: /other}\n    backends: [{id: o, address: "http://127.0.0.1:8081"}]\n'


def test_section_1_loads_as_written() -> None:
    config = load_config_text(SECTION_1)
    pool = config.upstream["api-canary-users"]
    assert pool.route is not None and [m.name for m in pool.route.headers] == ["x-canary", "user-agent"]
    assert pool.route.headers[1].invert and pool.route.query[0].present and pool.route.cookies[0].prefix == "on"
    policy = pool.traffic_policy
    assert policy is not None and policy.split[0].pool == "api-v2" and policy.split[0].percent == 5.0
    assert policy.mirror is not None and policy.mirror.max_inflight == 64
    assert policy.fault is not None and policy.fault.abort is not None and policy.fault.abort.status == 503
    assert config.upstream["api-v2"].route is None  # reachable only through the split
    assert config.upstream["maintenance"].backends == []  # answers itself
    assert config_warnings(config) == []


def test_defaults() -> None:
    policy = load(pool_text(policy="redirect: {location: /x}")).upstream["api"].traffic_policy
    assert policy is not None and policy.redirect is not None and policy.redirect.status == 302
    config = load(pool_text(policy="mirror: {pool: other}\nfault: {abort: {status: 503}}", others=OTHER))
    policy = config.upstream["api"].traffic_policy
    assert policy is not None and policy.mirror is not None and policy.fault is not None and policy.fault.abort is not None
    assert (policy.mirror.percent, policy.mirror.max_body_bytes, policy.mirror.max_inflight, policy.mirror.timeout_ms) == (100.0, 65536, 64, 2000)
    assert (policy.fault.abort.percent, policy.fault.header_control, policy.fault.max_active) == (100.0, False, 100)


def test_matcher_rules_with_key_paths_and_lines() -> None:
    text = pool_text(route="""
      path_prefix: /
      headers:
        - {name: x-a}
        - {name: x-b, exact: a, prefix: b}
        - {name: "x b", exact: a}
        - {name: x-c, regex: "(unclosed"}
        - {name: x-d, exact: "a\\rb"}
      query:
        - {name: "a=b", present: true}
      cookies:
        - {name: " ", present: true}""".replace("\n", "\n  "))
    issues = errors(text)
    assert "exactly one of exact, prefix, suffix, regex, present is required (got none)" in issue_at(issues, "upstream.api.route.headers[0]").message
    assert "(got exact, prefix)" in issue_at(issues, "upstream.api.route.headers[1]").message
    assert "not an HTTP field name" in issue_at(issues, "upstream.api.route.headers[2].name").message
    regex = issue_at(issues, "upstream.api.route.headers[3].regex")
    assert "not a valid regular expression" in regex.message and regex.line == line_of(text, "(unclosed")
    assert "control characters" in issue_at(issues, "upstream.api.route.headers[4].exact").message
    assert "a query name is visible ASCII" in issue_at(issues, "upstream.api.route.query[0].name").message
    assert issue_at(issues, "upstream.api.route.cookies[0].name").message == "must not be blank"


def test_matchers_are_part_of_the_route_identity() -> None:
    base = LISTEN + "upstream:\n"
    pool = '  {name}:\n    route: {{path_prefix: /v1, {matchers}}}\n    backends: [{{id: a, address: "http://127.0.0.1:8080"}}]\n'
    a = pool.format(name="a", matchers="headers: [{name: x-canary, exact: '1'}, {name: X-Beta, present: true}]")
    # the same matchers in another order (and name case) are the same route
    b = pool.format(name="b", matchers="headers: [{name: x-beta, present: true}, {name: x-canary, exact: '1'}]")
    c = pool.format(name="c", matchers="headers: [{name: x-canary, exact: '2'}]")
    d = pool.format(name="d", matchers="headers: [{name: x-beta, present: false}]")
    e = pool.format(name="e", matchers="headers: [{name: x-beta, present: true, invert: true}]")  # = present: false
    issues = errors(base + a + b + c + d + e)
    assert issue_at(issues, "upstream.b.route").message == "pool 'b' has the same route as pool 'a'"
    assert issue_at(issues, "upstream.e.route").message == "pool 'e' has the same route as pool 'd'"
    assert [i.path for i in issues] == ["upstream.b.route", "upstream.e.route"]  # c differs from a, d from both
    load(base + a + c)


def test_split_rules() -> None:
    issues = errors(pool_text(policy="""
        split:
          - {pool: ghost, percent: 5}
          - {pool: api, percent: 5}
          - {pool: other, percent: 60.123}
          - {pool: other, percent: 60}
        split_key: "cookie:"
        """, others=OTHER))
    assert issue_at(issues, "upstream.api.traffic_policy.split[0].pool").message == "no pool is named 'ghost'"
    assert "cannot split to itself" in issue_at(issues, "upstream.api.traffic_policy.split[1].pool").message
    assert issue_at(issues, "upstream.api.traffic_policy.split[2].percent").message == "at most two decimals (got 60.123)"
    assert issue_at(issues, "upstream.api.traffic_policy.split[3].pool").message == "pool 'other' is already split[2]"
    assert "needs a name" in issue_at(issues, "upstream.api.traffic_policy.split_key").message
    over = errors(pool_text(policy="split: [{pool: other, percent: 60}, {pool: third, percent: 40.01}]",
                            others=OTHER + OTHER.replace("other", "third").replace("8081", "8082")))
    assert issue_at(over, "upstream.api.traffic_policy.split").message == "the split percents add up to 100.01, more than 100"
    alone = errors(pool_text(policy="split_key: path\nsplit: []"))
    assert issue_at(alone, "upstream.api.traffic_policy.split_key").message == "only allowed with split"
    big = errors(pool_text(policy="split: [{pool: other, percent: 101}]", others=OTHER))
    assert issue_at(big, "upstream.api.traffic_policy.split[0].percent").message == "must be between 0 and 100 (got 101.0)"


def test_mirror_and_fault_rules() -> None:
    issues = errors(pool_text(policy="""
        mirror: {pool: ghost, percent: -1, max_body_bytes: -1, max_inflight: 0, timeout_ms: 0}
        fault: {abort: {status: 600, percent: 1.005}, delay: {fixed_ms: -5}, max_active: 0}
        """))
    for path, text in [
        ("mirror.pool", "no pool is named 'ghost'"), ("mirror.percent", "between 0 and 100"),
        ("mirror.max_body_bytes", ">= 0"), ("mirror.max_inflight", ">= 1"), ("mirror.timeout_ms", "> 0"),
        ("fault.abort.status", "between 200 and 599"), ("fault.abort.percent", "two decimals"),
        ("fault.delay.fixed_ms", ">= 0"), ("fault.max_active", ">= 1"),
    ]:
        assert text in issue_at(issues, f"upstream.api.traffic_policy.{path}").message, path
    empty = errors(pool_text(policy="fault: {max_active: 3}"))
    assert issue_at(empty, "upstream.api.traffic_policy.fault").message == "needs delay, abort or header_control"
    load(pool_text(policy="fault: {header_control: true}"))  # header control alone is a fault block


def test_header_rewrite_rules() -> None:
    text = pool_text(policy="""
        request_headers:
          set: {Host: x, x-ok: "a\\nb", X-Env: prod}
          add: {x-forwarded-for: 1.2.3.4, connection: close, x-env: again, " bad": v, x-pad: " v"}
          remove: [content-length, x-gone, X-GONE]
        response_headers:
          set: {content-length: "5", transfer-encoding: chunked, server: edge}
          remove: [x-powered-by]
        """)
    issues = errors(text)
    prefix = "upstream.api.traffic_policy.request_headers"
    assert issue_at(issues, f"{prefix}.set.Host").message == "host cannot be changed here: the proxy sets it on every request"
    assert issue_at(issues, f"{prefix}.set.x-ok").message == "a field value that holds a control character (CR, LF, NUL...)"
    assert "x-forwarded-for cannot be changed here" in issue_at(issues, f"{prefix}.add.x-forwarded-for").message
    assert "connection cannot be changed here" in issue_at(issues, f"{prefix}.add.connection").message
    assert issue_at(issues, f"{prefix}.add.x-env").message == "x-env is already in set"
    assert "not an HTTP field name" in issue_at(issues, f'{prefix}.add[" bad"]').message
    assert issue_at(issues, f"{prefix}.add.x-pad").message == "a field value that starts or ends with whitespace"
    assert "content-length cannot be changed here" in issue_at(issues, f"{prefix}.remove[0]").message
    assert issue_at(issues, f"{prefix}.remove[2]").message == "x-gone is already in remove"
    response = "upstream.api.traffic_policy.response_headers"
    assert issue_at(issues, f"{response}.set.content-length").message == "content-length cannot be changed here: it frames the response"
    assert "transfer-encoding cannot be changed here" in issue_at(issues, f"{response}.set.transfer-encoding").message
    assert not [i for i in issues if i.path in (f"{response}.set.server", f"{response}.remove[0]")]


def test_rewrite_direct_response_and_redirect_rules() -> None:
    issues = errors(pool_text(route="{host: a.example.com}", policy="rewrite: {path_prefix: internal}"))
    assert [i.message for i in issues if i.path == "upstream.api.traffic_policy.rewrite.path_prefix"] == [
        "must be a path starting with '/' (got 'internal')", "needs route.path_prefix (the prefix it replaces)"]
    both = errors(pool_text(policy="""
        direct_response: {status: 99, body: x, headers: {content-length: "1"}}
        redirect: {status: 200, location: "ftp://x/{path}"}
        split: [{pool: other, percent: 5}]
        request_headers: {add: {via: edge}}
        """, others=OTHER))
    prefix = "upstream.api.traffic_policy"
    assert issue_at(both, f"{prefix}.direct_response.status").message == "must be between 200 and 599 (got 99)"
    assert "content-length cannot be changed here" in issue_at(both, f"{prefix}.direct_response.headers.content-length").message
    assert issue_at(both, f"{prefix}.redirect.status").message == "must be one of 301, 302, 303, 307, 308 (got 200)"
    assert [i.message for i in both if i.path == f"{prefix}.redirect"] == ["direct_response and redirect cannot both be set"]
    assert "absolute http(s) URL" in issue_at(both, f"{prefix}.redirect.location").message
    assert issue_at(both, f"{prefix}.split").message == "never applies: direct_response answers every request of this pool before it"
    assert "never applies" in issue_at(both, f"{prefix}.request_headers").message
    huge = errors(pool_text(policy=f"direct_response: {{status: 200, body: {'x' * 65537}}}"))
    assert issue_at(huge, f"{prefix}.direct_response.body").message == "at most 65536 bytes"


def test_redirect_locations() -> None:
    for good in ("https://new.example.com{path}", "https://{host}{uri}", "/maintenance", "http://x/{path}?from={query}",
                 "{path}"):
        assert location_error(good) is None, good
    assert location_error("//evil.example/x") == "a path must not start with '//' (a browser reads it as another host)"
    assert location_error("/\\evil.example") is not None
    assert location_error("relative/path") == "must be an absolute http(s) URL or an absolute path starting with '/'"
    assert location_error("https://x/{nope}").startswith("unknown placeholder {nope}")  # type: ignore[union-attr]
    assert location_error("https://x/{path") == "a '{' without its '}'"
    assert location_error("https://x/}") == "a '}' without its '{'"
    assert location_error("https://x/a b") == "must be ASCII without spaces or control characters"


def test_route_and_backends_are_optional_only_where_the_spec_allows() -> None:
    no_route = LISTEN + 'upstream:\n  lonely:\n    backends: [{id: a, address: "http://127.0.0.1:8080"}]\n'
    issue = issue_at(errors(no_route), "upstream.lonely.route")
    assert issue.message.startswith("required key is missing (only a pool that another pool's traffic_policy")
    assert issue.line == line_of(no_route, "lonely:")
    no_backends = errors(pool_text(backends="[]"))
    assert issue_at(no_backends, "upstream.api.backends").message.startswith("a pool needs at least one backend")
    omitted = errors(LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n")
    assert issue_at(omitted, "upstream.api.backends").message.startswith("a pool needs at least one backend")
    load(pool_text(backends="[]", policy="direct_response: {status: 204}"))
    load(pool_text(backends="[]", policy="redirect: {location: /x}"))
    load(pool_text(backends="[]", policy="split: [{pool: other, percent: 100}]", others=OTHER))
    load(pool_text(policy="mirror: {pool: shadow}") + "  shadow:\n    backends: []\n")  # no route, no backends: a warning


def test_warnings() -> None:
    text = pool_text(policy="split: [{pool: empty, percent: 5}]\nmirror: {pool: empty}") + "  empty: {backends: []}\n" + (
        '  down:\n    route: {host: down.example.com}\n    auth: {api_key: {keys: [k]}}\n'
        '    traffic_policy: {direct_response: {status: 503}}\n')
    warnings = [(w.path, w.message) for w in config_warnings(load(text))]
    assert warnings == [
        ("upstream.api.traffic_policy.split[0].pool", "pool 'empty' has no backends: the requests split to it get 503"),
        ("upstream.api.traffic_policy.mirror.pool", "pool 'empty' has no backends: every copy is dropped"),
        ("upstream.down.traffic_policy.direct_response", "direct_response answers before auth runs: this pool's auth never applies"),
    ]


def test_spooky_strict_reports_a_pool_without_route_or_backends() -> None:
    text = SECTION_1
    found = {(i.path, i.message) for i in spooky_strict_issues(load_config_text(text), text)}
    assert ("upstream.api-v2", "has no route (Spooky requires one in every pool)") in found
    assert ("upstream.maintenance", "has no backends (Spooky requires at least one in every pool)") in found
    assert ("upstream.api-canary-users.traffic_policy", "a spooky-trio extension key (Spooky rejects it)") in found
    assert ("upstream.api-canary-users.route.headers", "a spooky-trio extension key (Spooky rejects it)") in found


def test_each_policy_in_words() -> None:
    words = describe_traffic(load_config_text(SECTION_1))
    assert words["api-canary-users"] == [
        'route: host api.example.com and path starting with /v1 and header x-canary is "1" and header user-agent does not '
        'match ".*Mobile.*" and query parameter debug is present and cookie beta starts with "on"',
        "split: 5% to pool api-v2, 95% stay here; chosen by the hash of cookie:session (the same key always goes the same "
        "way; requests without it are split at random); the target pool's backends, limits and balancing serve, this "
        "pool's policy applies",
        "mirror: a copy of 10% of the requests goes to pool api-shadow (host + '-shadow'; bodies up to 65536 bytes, at "
        "most 64 copies at once, 2000 ms each); its answer is discarded and it never delays the request",
        "fault injection (testing): 5% of the requests wait 200 ms; 1% are answered 503 by the proxy; at most 100 "
        "requests in a fault at once; header control off",
        "request headers: remove x-debug; set x-env (value not shown); add via (value not shown)",
        "response headers: remove server; set strict-transport-security: max-age=31536000",
        "rewrite: the route's path prefix becomes /internal/v1 at the backend",
    ]
    assert words["api-v2"] == ["no route: reached only through pool api-canary-users's split or mirror"]
    assert words["maintenance"] == ["direct response: every request is answered 503 by the proxy (12-byte body)"]
    assert words["moved"] == ["redirect: every request is answered 308 to https://new.example.com{path}"]
    secret = load(pool_text(route="{path_prefix: /, headers: [{name: Authorization, exact: 'Bearer s3cret'}]}"))
    assert describe_traffic(secret)["api"] == ["route: path starting with / and header Authorization is (value not shown)"]


def test_check_prints_each_policy_in_words(tmp_path: Path, certs_dir: Path) -> None:
    import subprocess
    import sys

    text = SECTION_1.replace("certs/c.pem", str(certs_dir / "localhost.pem")).replace("certs/k.pem", str(certs_dir / "localhost.key"))
    path = tmp_path / "c.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "spooky_trio", "check", "--config", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert (out.returncode, out.stderr) == (0, "")
    lines = out.stdout.splitlines()
    assert lines[-1] == "config OK"
    words = describe_traffic(load_config_text(text))
    assert lines[:-1] == [f"pool {pool}: {line}" for pool, sentences in words.items() for line in sentences]
    assert "pool api-canary-users: split: 5% to pool api-v2, 95% stay here" in out.stdout
