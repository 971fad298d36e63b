"""The command line itself, through subprocesses: ``--help`` lists every command with one
line, a mistyped command is named as such, ``--log-level``/``--log-format`` override the
config (for the start, every reload and every worker), a closed stdout ends quietly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.cli import COMMANDS
from tests.cli.test_commands import spooky
from tests.support.fleet import Output
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml


def test_help_lists_every_command_with_one_line_and_the_version_option() -> None:
    out = spooky("--help")
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].startswith("usage: spooky-trio")
    for name in COMMANDS:
        listed = [line for line in lines if line.startswith(f"  {name} ")]
        assert len(listed) == 1 and len(listed[0].split(None, 1)[1]) > 10, name
    assert "worker" not in out.stdout  # internal: the supervisor's
    assert any("--version" in line for line in lines)
    assert spooky("-h").stdout == out.stdout


@pytest.mark.parametrize(("typed", "meant"), [("chek", "check"), ("rn", "run"), ("reqest", "request"), ("zzz", None)])
def test_a_mistyped_command_is_reported_as_such(typed: str, meant: str | None) -> None:
    out = spooky(typed, "--config", "/nonexistent.yaml")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and f"unknown command '{typed}'" in out.stderr
    assert (f"did you mean '{meant}'?" in out.stderr) if meant else "did you mean" not in out.stderr
    assert "unrecognized arguments" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["check", "--help"], ["request", "--help"]])
def test_a_closed_stdout_ends_without_a_traceback(args: list[str]) -> None:
    # `spooky-trio --help | head -1`, made deterministic: the reader is gone before we write
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "spooky_trio", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    # our own output: exit 1 (cut short); argparse's (a command's --help) ignores the error itself
    assert out.returncode == (1 if args[0].startswith("-") else 0)


def test_log_options_are_validated() -> None:
    out = spooky("run", "--config", "/nonexistent.yaml", "--log-format", "xml")
    assert out.returncode == 2 and "--log-format" in out.stderr and "Traceback" not in out.stderr
    out = spooky("--log-level", "loud", "--config", "/nonexistent.yaml")
    assert out.returncode == 2 and "--log-level" in out.stderr


async def ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
        while (await api.get("/ready")).status_code != 200:
            await trio.sleep(0.05)


def json_lines(data: bytes) -> list[dict[str, object]]:
    lines = [line for line in data.decode().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this fails


@pytest.mark.parametrize("workers", [1, 2])
async def test_log_level_and_format_override_the_config_for_every_reload_and_worker(certs_dir: Path, tmp_path: Path, workers: int) -> None:
    config, cport = tmp_path / "config.yaml", free_udp_port()
    config.write_text(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, port=free_udp_port(), extra=(
        "log:\n  level: error\n  format: plain\n"
        f"observability:\n  metrics:\n    enabled: false\n  control_api:\n    enabled: true\n    port: {cport}\n"
        f"performance:\n  worker_threads: {workers}\n"
    )))
    # "spooky" is Spooky's name for info
    argv = [sys.executable, "-m", "spooky_trio", "--config", str(config), "--log-level", "spooky", "--log-format", "json"]
    proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    output = Output(proc.stderr)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        try:
            with trio.fail_after(30):
                await output.wait_for(b'"msg": "listening for HTTP/3', workers)
                await ready(cport)  # signal handlers installed (in every worker)
            proc.send_signal(signal.SIGHUP)  # the file still says error/plain: the override holds
            with trio.fail_after(30):
                await output.wait_for(rb'"msg": "config generation 2 applied', workers)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    entries = json_lines(bytes(output.data))
    assert {entry["level"] for entry in entries} >= {"info"}
    assert any(entry["msg"] == "stopped" for entry in entries)
