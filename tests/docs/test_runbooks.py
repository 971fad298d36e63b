"""The runbooks, the security, auth and install pages cite only metrics, control API paths and commands
that exist.

Metric names are taken from the modules that define metrics (``observability/metrics.py``,
``collect.py``, ``supervisor_metrics.py``, ``ratelimit_metrics.py``, ``discovery_metrics.py``: every ``spooky_*`` literal, with
the suffixes the exposition adds: ``_total`` for counters, ``_bucket``/``_count``/``_sum``
for histograms). Control API paths are the defaults of ``ControlApiConfig``, the ``/admin/config`` routes
and the metrics path. ``spooky-trio <command>`` must be a CLI command. Only files present are
checked, so runbooks other branches add are covered once they land.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from spooky_trio import cli
from spooky_trio.config.schema_runtime import ControlApiConfig, MetricsConfig
from spooky_trio.observability import collect, discovery_metrics, metrics, ratelimit_metrics, supervisor_metrics
from spooky_trio.serving.admin_upstreams import split_path
from spooky_trio.serving.control import CONFIG_ACTIONS, CONFIG_PATH

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs" / "runbooks").glob("*.md")) + [ROOT / "docs" / n for n in ("security.md", "auth.md", "install.md",
                                                                                       "rate-limiting.md", "discovery.md", "fleet.md")]
INDEXED = ["first-10-minutes.md", "backend-incident.md", "draining-a-node.md", "certificate-rotation.md",
           "config-change-and-rollback.md", "staged-rollout.md", "overload-incident.md", "auth-key-rotation.md",
           "rate-limit-store-down.md", "discovery-source-down.md"]

_LITERAL = re.compile(r'(\w*)\(\s*"(spooky_[a-z0-9_]+)"')
_DOC_METRIC = re.compile(r"spooky_[A-Za-z0-9_]*[A-Za-z0-9]")
_DOC_PATH = re.compile(r"(?<![/.-])/(?:admin(?:/[a-z0-9_-]+)*|health|ready|metrics)(?![\w/-])")
#: in code only: after a backtick, at the start of a (code block) line, or after a shell prompt
_DOC_COMMAND = re.compile(r"(?:^|`|\$ )spooky-trio ([a-z][a-z0-9-]*)", re.MULTILINE)


def defined_metrics() -> set[str]:
    modules = (metrics, collect, supervisor_metrics, ratelimit_metrics, discovery_metrics)
    source = "".join(Path(module.__file__).read_text() for module in modules)  # type: ignore[arg-type]
    names: set[str] = set()
    for constructor, name in _LITERAL.findall(source):
        names.add(name)
        if "Counter" in constructor or constructor == "_counter":
            names.add(name + "_total")
        elif constructor == "Histogram":
            names.update({name + "_bucket", name + "_count", name + "_sum"})
    return names


def control_paths() -> set[str]:
    api = ControlApiConfig()
    paths = {getattr(api, f.name) for f in attrs.fields(ControlApiConfig) if f.name.endswith("_path")}
    config_paths = {CONFIG_PATH} | {f"{CONFIG_PATH}/{action}" for action in CONFIG_ACTIONS}
    return paths | config_paths | {MetricsConfig().path}


def test_the_collector_names_are_found() -> None:
    names = defined_metrics()
    # one from each kind of definition: registry counter, histogram, scrape-time families
    for name in ("spooky_requests_total", "spooky_upstream_request_latency_ms_bucket", "spooky_backend_healthy",
                 "spooky_active_connections", "spooky_protocol_errors_total", "spooky_downstream_tls_alpn_total"):
        assert name in names
    assert "spooky_request_buffered_bytes" not in names  # a spec metric of a feature that does not exist


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_metrics_exist(doc: Path) -> None:
    names = defined_metrics()
    text = doc.read_text()
    missing = []
    for match in _DOC_METRIC.finditer(text):
        name = match.group(0)
        follows = text[match.end() : match.end() + 2]
        if follows.startswith("_("):  # a grep pattern: spooky_backend_(timeouts|errors)_total
            ok = any(n.startswith(name + "_") for n in names)
        else:
            ok = name in names
        if not ok:
            missing.append(name)
    assert not missing, f"{doc.name} cites metrics that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_control_api_paths_exist(doc: Path) -> None:
    paths = control_paths()
    cited = {path for path in _DOC_PATH.findall(doc.read_text()) if split_path(path) is None}  # (backend admin: any pool, id)
    assert cited <= paths, f"{doc.name} cites paths the control API does not serve: {sorted(cited - paths)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_commands_exist(doc: Path) -> None:
    cited = set(_DOC_COMMAND.findall(doc.read_text()))
    assert cited <= set(cli.COMMANDS), f"{doc.name} cites spooky-trio commands that do not exist: {sorted(cited - set(cli.COMMANDS))}"


def test_the_index_lists_every_runbook() -> None:
    index = (ROOT / "docs" / "runbooks" / "README.md").read_text()
    for name in INDEXED:
        assert f"({name})" in index, name
    for present in (ROOT / "docs" / "runbooks").glob("*.md"):
        if present.name != "README.md":
            assert f"({present.name})" in index, f"{present.name} is not in the runbook index"


def test_checks_catch_a_made_up_name(tmp_path: Path) -> None:
    names = defined_metrics()
    assert "spooky_made_up_total" not in names
    assert "/admin/made-up" not in control_paths()
    assert split_path("/admin/upstreams/api/backends/api-9") == ("api", "api-9") and split_path("/admin/upstreams/api") is None
    assert _DOC_PATH.findall("curl $API/admin/runtime/reload-certs and /ready, not /etc/spooky/x") == [
        "/admin/runtime/reload-certs", "/ready"]
