"""The house rules that keep the package graph layered (docs/architecture.md, "Layers").

``lint-imports`` checks the ``[tool.importlinter]`` contract of pyproject.toml: every
import (lazy ones inside functions included) points down the layer list, and the packages
of one row (routing, balancing, health, resilience, observability, clients) do not import
each other. A new upward import fails this test with the import chain that breaks it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_imports_only_point_down() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_types_check() -> None:
    """``mypy`` (strict, no ``Any`` written outside the library-boundary modules that
    pyproject.toml lists) passes over src/."""
    mypy = pathlib.Path(sys.executable).with_name("mypy")
    result = subprocess.run([str(mypy)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
