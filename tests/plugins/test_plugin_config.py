"""What the config says of plugin entries (docs/plugins.md, docs/configuration.md "Plugins"):
the rules of ``plugins`` and ``filters``, and what finding the code and asking the factory
reports, each at its key path with its line, never with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spooky_trio.config import ConfigError, check_files, config_warnings, load_config_text
from tests.support.proxy import proxy_yaml

REPO = Path(__file__).resolve().parents[2]


def config_text(certs_dir: Path, plugins: str, filters: str = "[p]") -> str:
    pools = f"""
app:
  route: {{path_prefix: "/"}}
  backends: [{{id: a, address: "http://127.0.0.1:8080"}}]
  filters: {filters}
"""
    return proxy_yaml(pools, certs_dir=certs_dir, extra="plugins:\n" + plugins)


def rule_issues(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return [(issue.path, issue.message) for issue in caught.value.issues]


def file_issues(text: str) -> list[tuple[str, str]]:
    return [(issue.path, issue.message) for issue in check_files(load_config_text(text))]


def test_rules_of_entries_and_filters(certs_dir: Path) -> None:
    text = config_text(certs_dir, """\
  - {name: p, object: 'tests.plugins.samples:Noop'}
  - {name: p, object: 'tests.plugins.samples:Noop'}
  - {name: 'bad name', object: 'tests.plugins.samples:Noop'}
  - {name: both, object: 'tests.plugins.samples:Noop', entry_point: x}
  - {name: neither}
  - {name: path, object: 'not a path'}
  - {name: slow, object: 'tests.plugins.samples:Noop', plugin_timeout_ms: 0}
""", "[p, nope, p]")
    assert rule_issues(text) == [
        ("upstream.app.filters[1]", "no plugin is named 'nope' (plugins: both, neither, p, path, slow)"),
        ("upstream.app.filters[2]", "'p' is already in this pool's filters (a filter runs once per request)"),
        ("plugins[1].name", "duplicate plugin name 'p' (also plugins[0])"),
        ("plugins[2].name", "invalid plugin name 'bad name': a letter or digit, then letters, digits, '_', '.' or '-' (at most 64)"),
        ("plugins[3]", "give exactly one of entry_point (group spooky_trio.filters) and object (\"package.module:attribute\")"),
        ("plugins[4]", "give exactly one of entry_point (group spooky_trio.filters) and object (\"package.module:attribute\")"),
        ("plugins[5].object", "invalid import path 'not a path': write \"package.module:attribute\""),
        ("plugins[6].plugin_timeout_ms", rule_issues(text)[-1][1]),
    ]
    assert "plugin_timeout_ms" in rule_issues(text)[-1][0]


def test_config_must_be_a_mapping_and_is_never_quoted(certs_dir: Path) -> None:
    issues = rule_issues(config_text(certs_dir, "  - {name: p, object: 'tests.plugins.samples:Noop', config: [hunter2]}\n"))
    assert [path for path, _ in issues] == ["plugins[0].config"]
    assert "hunter2" not in issues[0][1]


def test_code_and_factory_problems_at_their_keys(certs_dir: Path) -> None:
    text = config_text(certs_dir, """\
  - {name: p, object: 'tests.plugins.samples:Picky', config: {header: 7, password: hunter2}}
  - {name: ep, entry_point: no-such-filter}
  - {name: mod, object: 'tests.plugins.no_such_module:X'}
  - {name: attr, object: 'tests.plugins.samples:NoSuchThing'}
  - {name: api, object: 'tests.plugins.samples:needs_api_9'}
  - {name: obj, object: 'tests.plugins.samples:not_a_filter'}
  - {name: ok, object: 'tests.plugins.samples:Picky', config: {header: x-tenant}}
""", "[p, ep, mod, attr, api, obj, ok]")
    issues = file_issues(text)
    assert [path for path, _ in issues] == ["plugins[0].config.header", "plugins[1].entry_point", "plugins[2].object",
                                            "plugins[3].object", "plugins[4]", "plugins[5]"]
    messages = [message for _, message in issues]
    assert messages[0] == "plugin 'p': refused by the plugin: is required: the header to read"
    assert messages[1].startswith("plugin 'ep': no entry point 'no-such-filter' in group spooky_trio.filters (installed: ")
    assert messages[2] == ("plugin 'mod': cannot import 'tests.plugins.no_such_module': ModuleNotFoundError: "
                           "No module named 'tests.plugins.no_such_module'")
    assert messages[3] == "plugin 'attr': 'tests.plugins.samples' has no attribute 'NoSuchThing'"
    assert messages[4] == ("plugin 'api': this plugin needs the spooky-trio plugin API 9.0; this proxy offers 1.0")
    assert messages[5] == ("plugin 'obj': the factory of object 'tests.plugins.samples:not_a_filter' returned a object, which has "
                           "neither async def on_request nor async def on_response")
    assert not any("hunter2" in message for message in messages)


def test_an_entry_no_pool_lists_is_a_warning(certs_dir: Path) -> None:
    text = config_text(certs_dir, "  - {name: p, object: 'tests.plugins.samples:Noop'}\n"
                                  "  - {name: idle, object: 'tests.plugins.samples:Noop'}\n")
    assert [(issue.path, issue.message) for issue in config_warnings(load_config_text(text))] == [
        ("plugins[1].name", "no pool lists plugin 'idle' in its filters, so it never runs")]


def test_check_reports_without_starting(certs_dir: Path, tmp_path: Path) -> None:
    text = config_text(certs_dir, "  - {name: p, object: 'tests.plugins.samples:Picky'}\n")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "spooky_trio", "check", "--config", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "Picky" in row)  # the key is absent: its entry
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.splitlines() == [f"{path}: plugins[0].config.header: line {line} col 5: plugin 'p': refused by the plugin: "
                                       "is required: the header to read"]
    assert "Traceback" not in out.stderr
