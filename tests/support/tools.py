"""External tools some tests need (interop peers, load generators, real servers).

``require(name, package)`` returns the tool's path. Without it, a developer machine skips the
test with the reason; under ``CI=true`` a missing tool fails the test instead, because in CI
``.ci/run`` installs every tool first and a skipped test there would prove nothing.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``.ci/run`` exports ``CI=true``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(name: str, package: str) -> str:
    """The path of ``name``; skip (fail under CI) naming the Debian ``package`` to install."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; `make test-tools` installs it as root)"
    if in_ci():
        pytest.fail(f"{reason}, and CI=true requires it")
    pytest.skip(reason)
