"""Settings keyed by pool name: accepted whatever the name, a warning for a name no pool has.

Table-driven over every pool-keyed setting of spooky-head.md section 4 that this schema has.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from spooky_trio.config import config_warnings, load_config_text
from spooky_trio.config.pool_keyed import POOL_KEYED
from tests.config.helpers import LISTEN, line_of

POOLS = """\
upstream:
  api:
    route: {path_prefix: /api}
    backends: [{id: a, address: "http://127.0.0.1:8080"}]
  web:
    route: {path_prefix: /}
    backends: [{id: a, address: "http://127.0.0.1:8080"}]
"""

# (resilience section text with names api, ghost, "/legacy"; warned key paths; their lines)
SETTINGS = [
    (
        "  route_queue:\n    caps:\n      api: 64\n      ghost: 4\n      /legacy: 8\n",
        ["resilience.route_queue.caps.ghost", 'resilience.route_queue.caps["/legacy"]'],
        ["ghost: 4", "/legacy: 8"],
    ),
    (
        "  retry_budget:\n    per_route_ratio_percent:\n      api: 5\n      ghost: 0\n      /legacy: 100\n",
        ["resilience.retry_budget.per_route_ratio_percent.ghost", 'resilience.retry_budget.per_route_ratio_percent["/legacy"]'],
        ["ghost: 0", "/legacy: 100"],
    ),
    (
        "  hedging:\n    enabled: true\n    route_allowlist: [api, ' ghost ', '', /legacy]\n",
        ["resilience.hedging.route_allowlist"] * 2,
        ["route_allowlist:"] * 2,
    ),
    (
        "  brownout:\n    core_routes:\n      - api\n      - ghost\n      - '  '\n      - /legacy\n",
        ["resilience.brownout.core_routes"] * 2,
        ["core_routes:"] * 2,
    ),
    (
        # blank entries are errors here (not dropped), so each name is reported at its entry
        "  scoped_rate_limits:\n    - {name: r, scope: client, requests_per_sec: 1, burst: 1,\n"
        "       route_allowlist: [api, ' ghost ', /legacy]}\n",
        ["resilience.scoped_rate_limits[0].route_allowlist[1]", "resilience.scoped_rate_limits[0].route_allowlist[2]"],
        ["route_allowlist:"] * 2,
    ),
]


def test_the_table_covers_every_pool_keyed_setting() -> None:
    assert len(SETTINGS) == len(POOL_KEYED)


@pytest.mark.parametrize(("section", "paths", "lines"), SETTINGS)
def test_unknown_names_load_and_warn(section: str, paths: list[str], lines: list[str]) -> None:
    text = LISTEN + POOLS + "resilience:\n" + section
    config = load_config_text(text)
    warnings = config_warnings(config)
    assert [w.path for w in warnings] == paths
    assert [w.line for w in warnings] == [line_of(text, needle) for needle in lines]
    messages = sorted(w.message for w in warnings)
    assert "'/legacy'" in messages[0] and "pool names, not path prefixes" in messages[0]
    assert "'ghost'" in messages[1] and "never applies" in messages[1] and "path prefixes" not in messages[1]
    # once pools of those names exist, there is nothing to say
    more = '  ghost:\n    route: {host: g.example}\n    backends: [{id: a, address: "http://127.0.0.1:8080"}]\n'
    more += '  /legacy:\n    route: {host: l.example}\n    backends: [{id: a, address: "http://127.0.0.1:8080"}]\n'
    assert config_warnings(load_config_text(LISTEN + POOLS + more + "resilience:\n" + section)) == []


def test_names_are_trimmed_and_blanks_dropped_in_lists() -> None:
    config = load_config_text(LISTEN + POOLS + "resilience:\n" + SETTINGS[2][0] + SETTINGS[3][0])
    assert config.resilience.hedging.route_allowlist == ["api", "ghost", "/legacy"]
    assert config.resilience.brownout.core_routes == ["api", "ghost", "/legacy"]


def test_values_are_still_checked() -> None:
    from spooky_trio.config import ConfigError

    text = LISTEN + POOLS + "resilience:\n  route_queue: {caps: {api: 0}}\n  retry_budget: {per_route_ratio_percent: {ghost: 101}}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert sorted(i.path for i in info.value.issues) == [
        "resilience.retry_budget.per_route_ratio_percent.ghost",
        "resilience.route_queue.caps.api",
    ]


REPO = Path(__file__).resolve().parents[2]


def test_check_prints_each_warning_and_passes(tmp_path: Path, certs_dir: Path) -> None:
    text = (
        LISTEN.replace("certs/c.pem", str(certs_dir / "localhost.pem")).replace("certs/k.pem", str(certs_dir / "localhost.key"))
        + POOLS
        + 'resilience:\n  route_queue:\n    caps: {"/api": 128}\n  brownout: {core_routes: [ghost]}\n'
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "spooky_trio", "check", "--config", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "config OK"
    caps, core = line_of(text, "caps:"), line_of(text, "core_routes")
    assert out.stderr.splitlines() == [
        f'{path}: warning: resilience.route_queue.caps["/api"]: line {caps} col 12: no pool is named \'/api\', '
        "so this entry never applies (these keys are pool names, not path prefixes)",
        f"{path}: warning: resilience.brownout.core_routes: line {core} col 14: no pool is named 'ghost', so this entry never applies",
    ]


def test_run_logs_each_warning_once_at_start(tmp_path: Path, certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from spooky_trio import cli

    text = LISTEN + POOLS + "resilience:\n  hedging: {route_allowlist: [ghost]}\nlog: {level: info}\n"
    config = load_config_text(text)
    calls: list[str] = []

    class Stop(Exception):
        pass

    def fake_server(*args: object, **kwargs: object) -> None:
        calls.append("server")
        raise Stop

    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "_load", lambda path: config)
    mp.setattr("spooky_trio.serving.server.Server", fake_server)
    mp.setattr("spooky_trio.serving.heap.freeze_startup_heap", lambda: calls.append("freeze"))  # not this test process's heap
    mp.setattr("spooky_trio.observability.logging.configure_logging", lambda log: None)
    try:
        with caplog.at_level(logging.WARNING, logger="spooky.config"), pytest.raises(Stop):
            cli.cmd_run(["--config", str(tmp_path / "x.yaml")])
    finally:
        mp.undo()
    assert calls == ["freeze", "server"]  # the daemon freezes its start-up heap first (serving/heap.py)
    warned = [r.getMessage() for r in caplog.records if r.name == "spooky.config"]
    line = line_of(text, "route_allowlist")
    assert warned == [f"config warning: resilience.hedging.route_allowlist: line {line} col 13: no pool is named 'ghost', so this entry never applies"]
