"""The random draws of the traffic policy (split, fault, mirror): percents with two decimals
as basis points, and one seeded RNG per decision and generation.

A generation's RNGs are seeded from its config's SHA-256 and its number (each decision its
own, so one's draws never shift another's): the same config replays the same sequence,
which keeps a decision explainable and a test reproducible; a reload reseeds.
"""

from __future__ import annotations

import random

from spooky_trio.config import Config


def basis_points(percent: float) -> int:
    """A percent with two decimals (0-100) as an integer out of 10000."""
    return round(percent * 100)


def policy_rng(config: Config, number: int, purpose: str) -> random.Random:
    """The RNG of decision ``purpose`` (``split``, ``fault``, ``mirror``) of generation
    ``number`` of ``config``."""
    return random.Random(f"{config.source_sha256}/{number}/{purpose}")
