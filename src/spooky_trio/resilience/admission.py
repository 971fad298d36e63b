"""Adaptive admission (``resilience.adaptive_admission``): a latency-driven global limit.

Every upstream latency sample (time to the response head) moves the effective limit: a
sample above ``high_latency_ms`` lowers it by ``decrease_step``, any other raises it by
``increase_step``, always within ``[min_limit, max_limit]``. It starts at ``max_limit``.
The pipeline admits a request only while the global inflight count is below
``min(effective limit, performance.global_inflight_limit)``.

The value lives in the Server's state store (it survives reloads); a reload that narrows
the bounds is honoured at the next read (:meth:`limit`).
"""

from __future__ import annotations

from spooky_trio.config import AdaptiveAdmissionConfig


class AdaptiveAdmission:
    """The effective limit; ``cfg`` is ``resilience.adaptive_admission`` (a loaded config,
    so ``max_limit`` is an int)."""

    __slots__ = ("_limit",)

    def __init__(self) -> None:
        self._limit: int | None = None

    def limit(self, cfg: AdaptiveAdmissionConfig) -> int:
        """The effective limit now, within the bounds of ``cfg``."""
        value = self._limit
        ceiling = cfg.max_limit or cfg.min_limit  # (the loader fills max_limit)
        if value is None or value > ceiling:
            value = self._limit = ceiling
        elif value < cfg.min_limit:
            value = self._limit = cfg.min_limit
        return value

    def observe(self, latency_ms: float, cfg: AdaptiveAdmissionConfig) -> int:
        """Fold in one latency sample; returns the new limit."""
        value = self.limit(cfg)
        if latency_ms > cfg.high_latency_ms:
            if value > cfg.min_limit:
                value = self._limit = max(cfg.min_limit, value - cfg.decrease_step)
        elif value < (ceiling := cfg.max_limit or cfg.min_limit):
            value = self._limit = min(ceiling, value + cfg.increase_step)
        return value
