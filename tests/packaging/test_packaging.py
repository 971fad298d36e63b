"""The production packaging (docs/install.md): the systemd unit passes ``systemd-analyze
verify`` without a warning and its offline security review, and says what the daemon
needs (restart on exit 75, reload by SIGHUP, drain by SIGTERM to the main process only);
the Dockerfile is parsed instruction by instruction (no Docker engine here): non-root,
UDP and TCP ports, a health check that asks the control API and works against a real one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import attrs
import trio

from spooky_trio.config.schema import ListenerConfig
from spooky_trio.config.schema_runtime import ControlApiConfig, PerformanceConfig
from spooky_trio.serving.exits import EXIT_RESTART
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy
from tests.support.tools import require

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "spooky-trio.service"
DOCKERFILE = REPO / "Dockerfile"
INSTALLED = "/opt/spooky-trio/bin/spooky-trio"  # where docs/install.md puts the command


# -- systemd --


def unit_entries(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order (a key may repeat, e.g. SystemCallFilter)."""
    entries: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries[(section, key.strip())].append(value.strip())
    return dict(entries)


def local_unit(tmp_path: Path) -> Path:
    """The unit with its command pointing at this checkout's (verify checks it exists)."""
    command = Path(sys.executable).parent / "spooky-trio"
    assert command.exists()
    path = tmp_path / "spooky-trio.service"
    path.write_text(UNIT.read_text().replace(INSTALLED, str(command)))
    return path


def test_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    tool = require("systemd-analyze", "systemd")
    result = subprocess.run([tool, "verify", str(local_unit(tmp_path))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # an unknown key is only a warning


def test_unit_hardening_passes_the_offline_security_review(tmp_path: Path) -> None:
    tool = require("systemd-analyze", "systemd")
    # exposure 0.0 (locked down) .. 10.0 (unprotected); systemd rates up to 2.0 "OK"
    result = subprocess.run([tool, "security", "--offline=true", "--threshold=20", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:]


def test_unit_says_what_the_daemon_needs() -> None:
    unit = unit_entries(UNIT.read_text())
    service = {key: values for (section, key), values in unit.items() if section == "Service"}
    assert service["ExecStart"] == [f"{INSTALLED} run --config /etc/spooky/config.yaml"]
    assert service["ExecStartPre"] == [f"{INSTALLED} check --config /etc/spooky/config.yaml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # a reload, not a restart
    assert service["RestartForceExitStatus"] == [str(EXIT_RESTART)] == service["SuccessExitStatus"]
    assert service["Restart"] == ["on-failure"]
    # TERM to the main process only: a supervisor drains its workers itself (a second TERM
    # reaching a worker directly would stop it at once)
    assert service["KillMode"] == ["mixed"] and service["KillSignal"] == ["SIGTERM"]
    drain_seconds = PerformanceConfig().shutdown_drain_timeout_ms / 1000
    assert float(service["TimeoutStopSec"][0]) >= 2 * drain_seconds
    assert service["User"] != ["root"] and service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"] == service["AmbientCapabilities"]
    assert service["ProtectSystem"] == ["strict"] and service["PrivateTmp"] == ["yes"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()  # the instance lock
    assert unit[("Install", "WantedBy")] == ["multi-user.target"]


# -- Docker --


@attrs.frozen
class Instruction:
    name: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form argument list (RUN/CMD/ENTRYPOINT/HEALTHCHECK CMD)."""
        text = self.args.split("CMD", 1)[1] if self.name == "HEALTHCHECK" else self.args
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation at the end of the file"
    stages: list[list[Instruction]] = []
    for line in logical:
        name, _, args = line.partition(" ")
        instruction = Instruction(name.upper(), " ".join(args.split()))
        assert instruction.name in {"FROM", "RUN", "COPY", "ENV", "USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL",
                                    "ENTRYPOINT", "CMD", "WORKDIR", "ARG", "LABEL"}, instruction
        if instruction.name == "FROM":
            stages.append([])
        assert stages, "the first instruction must be FROM"
        stages[-1].append(instruction)
    return stages


def only(stage: list[Instruction], name: str) -> Instruction:
    found = [i for i in stage if i.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_dockerfile_runs_unprivileged_with_udp_and_tcp_and_a_health_check() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) == 2  # build, then a runtime image without the build's leftovers
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for stage in stages:
        assert stage[0].args.startswith(f"python:{python}-slim")
    final = stages[-1]
    user = only(final, "USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0  # numeric: checkable as non-root
    assert final.index(only(final, "USER")) < final.index(only(final, "ENTRYPOINT"))
    assert f"--uid {uid}" in " ".join(i.args for i in final if i.name == "RUN")
    port = ListenerConfig().port
    assert set(only(final, "EXPOSE").args.split()) == {f"{port}/udp", f"{port}/tcp"}
    env = dict(re.findall(r"(\w+)=(\S+)", only(final, "ENV").args))
    control = ControlApiConfig()
    assert env["SPOOKY_HEALTH_URL"] == f"http://127.0.0.1:{control.port}{control.health_path}"
    healthcheck = only(final, "HEALTHCHECK")
    assert "--timeout=" in healthcheck.args and healthcheck.exec_form()[0] == "python"
    assert only(final, "ENTRYPOINT").exec_form() == ["spooky-trio"]
    assert only(final, "CMD").exec_form() == ["run", "--config", "/etc/spooky/config.yaml"]
    assert only(final, "STOPSIGNAL").args == "SIGTERM"


def test_docker_build_context_holds_what_the_package_build_reads() -> None:
    build = dockerfile_stages(DOCKERFILE.read_text())[0]
    copied = [part for i in build if i.name == "COPY" for part in shlex.split(i.args)[:-1]]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["packages"]["find"]["where"]}
    assert needed <= set(copied), (needed, copied)
    # .dockerignore excludes everything else (the venv, certificates, fuzz corpora) and not these
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")) or fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/") + "/*"):
                included = negated
        return included

    assert all(sent(path) for path in copied) and sent("src/spooky_trio/cli.py")
    assert not sent(".venv") and not sent(".dev-certs") and not sent("tests")


async def test_the_health_check_command_asks_a_real_control_api(certs_dir: Path) -> None:
    healthcheck = only(dockerfile_stages(DOCKERFILE.read_text())[-1], "HEALTHCHECK").exec_form()
    command = [sys.executable, *healthcheck[1:]]  # the image's `python`
    cport = free_udp_port()
    extra = f"observability:\n  control_api:\n    enabled: true\n    port: {cport}\n"

    async def check(url: str) -> int:
        env = {**os.environ, "SPOOKY_HEALTH_URL": url}
        return (await trio.run_process(command, env=env, check=False, capture_stderr=True)).returncode

    async with running_proxy(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=extra)):
        assert await check(f"http://127.0.0.1:{cport}/health") == 0
        assert await check(f"http://127.0.0.1:{cport}/nope") != 0  # a 404 is unhealthy
    assert await check(f"http://127.0.0.1:{cport}/health") != 0  # nothing listening
