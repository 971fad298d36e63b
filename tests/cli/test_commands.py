"""The daemon's command line as an operator meets it: exit codes and one-line errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy import free_udp_port, proxy_yaml

REPO = Path(__file__).resolve().parents[2]


def spooky(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spooky_trio", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _config(tmp_path: Path, certs_dir: Path, text: str | None = None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text or proxy_yaml('app:\n  route: {path_prefix: "/"}\n  backends: [{id: a, address: "http://127.0.0.1:9"}]\n', certs_dir=certs_dir))
    return path


def test_version() -> None:
    out = spooky("--version")
    assert out.returncode == 0 and out.stdout.startswith("spooky-trio ")


def test_check_ok(tmp_path: Path, certs_dir: Path) -> None:
    out = spooky("check", "--config", str(_config(tmp_path, certs_dir)))
    assert out.returncode == 0 and out.stdout.strip() == "config OK"


def test_dev_config_passes_check_once_dev_certs_exist(tmp_path: Path) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    subprocess.run([sys.executable, "-m", "spooky_trio.devtools.devcerts", ".dev-certs"], cwd=tmp_path, check=True, capture_output=True)
    out = spooky("check", "--config", "conf/dev.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "config OK"


def test_check_reports_every_error_with_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listen:\n  port: 70000\n"
        "upstream:\n  api:\n    route: {path_prefix: /}\n    backends:\n"
        "      - id: a\n        address: http://127.0.0.1:1\n        weight: 0\n"
        "      - id: a\n        address: ftp://x\n"
        "surprise: 1\n"
    )
    out = spooky("check", "--config", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    joined = "\n".join(lines)
    assert "listen.port: line 2" in joined
    assert "upstream.api.backends[0].weight: line 9" in joined
    assert "upstream.api.backends[1].id" in joined and "upstream.api.backends[1].address" in joined
    assert "surprise: line 12" in joined
    assert len(lines) >= 5
    assert "Traceback" not in out.stderr


def test_spec_examples_only_miss_their_certificate_files() -> None:
    for name in ("spooky-minimal.yaml", "spooky-production.yaml"):
        out = spooky("check", "--config", str(REPO / "conf" / name))
        assert out.returncode == 1
        problems = out.stderr.strip().splitlines()
        assert problems and all("/etc/spooky/certs/" in p for p in problems), problems


@pytest.mark.parametrize("command", [["run"], []])
def test_run_missing_config_is_one_line(tmp_path: Path, command: list[str]) -> None:
    out = spooky(*command, "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "nope.yaml" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_missing_certificate_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    text = _config(tmp_path, certs_dir).read_text().replace(str(certs_dir / "localhost.pem"), str(tmp_path / "gone.pem"))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = spooky("run", "--config", str(path))
    assert out.returncode == 1 and "gone.pem" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_run_bind_conflict_is_one_line(tmp_path: Path, certs_dir: Path) -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        path = _config(tmp_path, certs_dir, proxy_yaml('app:\n  route: {path_prefix: "/"}\n  backends: [{id: a, address: "http://127.0.0.1:9"}]\n', certs_dir=certs_dir, port=port))
        text = path.read_text() + "performance:\n  reuseport: false\n"
        path.write_text(text)
        out = spooky("run", "--config", str(path))
    assert out.returncode == 1 and f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
