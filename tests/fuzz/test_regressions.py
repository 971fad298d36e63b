"""Regression tests for what fuzzing found (inputs live under ``fuzz/regressions/``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import ConfigError, load_config_text

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # host_policy.host was only checked for blankness: a non-ASCII host made every request
        # of the pool fail in upstream_authority (str.encode("ascii")), and a CR/LF one would be
        # sent as the upstream Host / :authority
        ("host_policy_non_ascii.yaml", "upstream.a.host_policy.host"),
        ("host_policy_crlf.yaml", "upstream.a.host_policy.host"),
        # is_token / the hash-key pattern used re.match with "$", which also matches before a
        # trailing newline: "GET\n" passed as a method and "header:x-user\n" as a key
        ("trailing_newline_token.yaml", "upstream.a.route.method"),
        ("trailing_newline_token.yaml", "upstream.a.load_balancing.key"),
    ],
)
def test_config_rejects(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text((REGRESSIONS / "fuzz_config" / name).read_text())
    assert message in str(info.value)


def test_host_policy_rewrite_accepts_host_and_port() -> None:
    text = (
        "listen: {tls: {cert: c.pem, key: k.pem}}\nupstream:\n  a:\n    route: {path_prefix: /}\n"
        '    backends: [{id: b, address: "http://127.0.0.1:1"}]\n'
        "    host_policy: {mode: rewrite, host: %s}\n"
    )
    for host in ("web.internal", "web.internal:8443", "'[::1]:443'", "10.0.0.1"):
        config = load_config_text(text % host)
        assert config.upstream["a"].host_policy.host == host.strip("'")
    with pytest.raises(ConfigError):
        load_config_text(text % "'web.internal:99999'")


@pytest.mark.parametrize("name", ["null_key_crash", "non_string_keys.yaml"])
def test_non_string_yaml_keys_are_config_errors(name: str) -> None:
    # format_path assumed every mapping key was a str or a list index: a null or float key
    # (``null: 1``, ``1.5: x``) raised TypeError out of load_config_text
    text = (REGRESSIONS / "fuzz_config" / name).read_bytes().decode("utf-8", errors="replace")
    with pytest.raises(ConfigError):
        load_config_text(text)


def test_non_string_key_is_named_in_the_issue() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("null: 1\n1.5: x\n")
    assert '["None"]' in str(info.value) and '["1.5"]' in str(info.value)
