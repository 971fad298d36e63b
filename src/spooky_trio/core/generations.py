"""The generations that serve requests: a stable one and, during a staged rollout, a canary.

The reload manager (``serving/reload.py``) owns the one :class:`GenerationSet` of a server
and is the only writer; the request path reads it once per request (:meth:`pick`), the
health supervisor and the upstream pool follow :meth:`live`, and observability reads
:attr:`stable` / :attr:`canary`. Every write is a plain reference swap between two requests'
reads (Trio is single-threaded), so a request never sees half a change.
"""

from __future__ import annotations

import random

from spooky_trio.core.generation import Generation


class GenerationSet:
    """The stable generation, the optional canary and the canary's share of new requests."""

    __slots__ = ("_stable", "_canary", "_percent", "_random")

    def __init__(self, stable: Generation, *, rng: random.Random | None = None) -> None:
        self._stable = stable
        self._canary: Generation | None = None
        #: share of new requests the canary takes, 0-100
        self._percent = 0.0
        self._random = (rng or random.Random()).random

    @property
    def stable(self) -> Generation:
        """The generation every request uses that the canary does not take."""
        return self._stable

    @property
    def canary(self) -> Generation | None:
        """The staged generation taking :attr:`canary_percent` % of new requests, or None."""
        return self._canary

    @property
    def canary_percent(self) -> float:
        return self._percent if self._canary is not None else 0.0

    def pick(self) -> Generation:
        """The generation a new request uses: the canary's share goes to :attr:`canary`."""
        canary = self._canary
        if canary is not None and self._random() * 100 < self._percent:
            return canary
        return self._stable

    def live(self) -> list[Generation]:
        """The generations new requests may use: the stable one, then the canary if any."""
        return [self._stable] if self._canary is None else [self._stable, self._canary]

    # -- writes: the reload manager's transactions --

    def commit(self, generation: Generation) -> None:
        """``generation`` serves every new request; a canary, if any, is dropped."""
        self._stable, self._canary, self._percent = generation, None, 0.0

    def stage_canary(self, generation: Generation, percent: float) -> None:
        """``generation`` takes ``percent`` (0-100) % of new requests beside the stable one."""
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"canary percent must be within 0-100, not {percent!r}")
        self._canary, self._percent = generation, percent

    def promote(self) -> Generation:
        """The canary becomes the stable generation; returns it. Raises LookupError without one."""
        canary = self._canary
        if canary is None:
            raise LookupError("no canary generation to promote")
        self.commit(canary)
        return canary

    def drop_canary(self) -> Generation | None:
        """Stop sending requests to the canary; returns the dropped generation (or None)."""
        canary, self._canary, self._percent = self._canary, None, 0.0
        return canary
