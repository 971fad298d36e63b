"""docs/plugins.md's tutorial works as written: its package (the ``toml`` and first ``python``
blocks) installs with pip, offline; ``check`` accepts its config (the ``yaml`` block) and
reports the mistake the page shows, word for word; its unit test (the second ``python``
block) passes. A developer following the page never touches spooky-trio's code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "plugins.md").read_text()


def blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", PAGE, re.S) if lang == language]


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_the_tutorial_as_written(tmp_path: Path, certs_dir: Path) -> None:
    package = tmp_path / "spooky-stamp"
    (package / "src" / "spooky_stamp").mkdir(parents=True)
    (package / "pyproject.toml").write_text(blocks("toml")[0])
    module, unit_test = blocks("python")[:2]
    (package / "src" / "spooky_stamp" / "__init__.py").write_text(module)
    site = tmp_path / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": str(site)}
    out = run("-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", "--target", str(site), str(package),
              env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    config = blocks("yaml")[0]
    listen = f"listen:\n  address: 127.0.0.1\n  tls: {{cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}\n"
    (tmp_path / "spooky.yaml").write_text(config + listen)  # listen after it: the page's line numbers hold
    out = run("-m", "spooky_trio", "check", "--config", "spooky.yaml", env=env, cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "config OK\n", "")

    (tmp_path / "spooky.yaml").write_text(config.replace("{header: x-team}", "{header: 7}") + listen)
    out = run("-m", "spooky_trio", "check", "--config", "spooky.yaml", env=env, cwd=tmp_path)
    shown = next(line for line in PAGE.splitlines() if line.startswith("spooky.yaml: plugins[0]"))
    assert (out.returncode, out.stderr) == (1, shown + "\n")

    (tmp_path / "test_stamp.py").write_text(unit_test)
    out = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_stamp.py", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
