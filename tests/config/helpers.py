"""Helpers for the config tests: load YAML snippets and find issues by key path."""

from __future__ import annotations

import textwrap

import pytest

from spooky_trio.config import Config, ConfigError, ConfigIssue, load_config_text

LISTEN = """\
listen:
  tls:
    cert: certs/c.pem
    key: certs/k.pem
"""

POOL = """\
upstream:
  api:
    route:
      path_prefix: /
    backends:
      - id: a
        address: http://127.0.0.1:8080
"""


def load(text: str) -> Config:
    """Load dedented YAML text."""
    return load_config_text(textwrap.dedent(text))


def errors(text: str) -> list[ConfigIssue]:
    """The issues of dedented YAML text that must fail to load."""
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text))
    assert info.value.issues, "ConfigError without issues"
    return info.value.issues


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the ``occurrence``-th line of dedented ``text`` containing ``needle``."""
    seen = 0
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in text")


def issue_at(issues: list[ConfigIssue], path: str) -> ConfigIssue:
    """The single issue for ``path`` (fails listing all issues otherwise)."""
    found = [i for i in issues if i.path == path]
    assert len(found) == 1, f"expected one issue at {path}, got: {[str(i) for i in issues]}"
    return found[0]
