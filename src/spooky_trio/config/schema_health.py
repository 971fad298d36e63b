"""``health_check``: active probing of one backend, a class of its own so that both
``schema.py`` (a backend's block) and ``schema_discovery.py`` (discovered backends'
defaults) can name it without importing each other."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class HealthCheckConfig:
    """Active probing of one backend (GET ``path``; 2xx/3xx is success)."""

    path: str = "/health"
    interval: int = 5000
    timeout_ms: int = 1000
    failure_threshold: int = 3
    success_threshold: int = 2
    cooldown_ms: int = 5000
