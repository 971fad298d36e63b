"""The rules of one backend's fields, shared by the config's ``backends`` (validate.py) and
the backends a discovery source or the admin API names (``config/backend_entries.py``)."""

from __future__ import annotations

from spooky_trio.config.address import parse_backend_address
from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import KeyPath
from spooky_trio.config.schema import BackendConfig, HealthCheckConfig


def validate_backend_fields(out: Problems, path: KeyPath, backend: BackendConfig) -> None:
    """The rules of one backend's ``address``, ``weight`` and ``health_check`` (a config
    backend's, and one a discovery source or the admin API names)."""
    try:
        parse_backend_address(backend.address)
    except ValueError as exc:
        out.add(path + ("address",), str(exc))
    out.at_least(path + ("weight",), backend.weight, 1)
    if backend.health_check is not None:
        validate_health_check(out, path + ("health_check",), backend.health_check)


def validate_health_check(out: Problems, hc: KeyPath, check: HealthCheckConfig) -> None:
    """The rules of a ``health_check`` block at ``hc``."""
    out.http_path(hc + ("path",), check.path)
    out.positive(hc + ("interval",), check.interval)
    out.positive(hc + ("timeout_ms",), check.timeout_ms)
    out.at_least(hc + ("failure_threshold",), check.failure_threshold, 1)
    out.at_least(hc + ("success_threshold",), check.success_threshold, 1)
    out.at_least(hc + ("cooldown_ms",), check.cooldown_ms, 0)
