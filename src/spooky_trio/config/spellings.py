"""Accepted spellings of enumerated values: Spooky's exact rules (spooky-head.md section 3).

An enumerated schema field is typed with a ``Literal`` of its canonical values; the
structuring hook (:mod:`spooky_trio.config.convert`) asks :func:`canonical` for the value a
written spelling means. A ``Literal`` without an entry in :data:`SPELLINGS` accepts exactly
its canonical values, case-sensitively, as Spooky does for every enum it has no alias
table for (``log.format``, ``forwarded_headers.mode``, ``listen.protocol``, ...).

Case rules follow Spooky, value by value: ``load_balancing.type`` and ``log.level`` are
case-insensitive (Spooky's validator compares them with ``eq_ignore_ascii_case``),
``host_policy.mode`` is exact (serde names plus three aliases), and so is every enum without
an entry here (``scope``, ``kind``, ``failure_mode``, ``store``, ...). We also trim a
case-insensitive value, which Spooky's validator does not (its balancer does); a spelling
listed in :attr:`Spelling.ours`, or a case-insensitive value written with surrounding
whitespace, is accepted here but not by Spooky, and ``spooky-trio check --spooky-strict``
reports it (:func:`is_ours`, :mod:`spooky_trio.config.portability`).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

import attrs

from spooky_trio.config.schema import BalancingType, HostPolicyMode, LogLevel


@attrs.frozen
class Spelling:
    """Extra spellings of one enum: ``aliases`` maps a written form to its canonical value.

    With ``case_insensitive`` the written value is trimmed and lower-cased before the lookup
    (the alias keys are then lower case).
    """

    case_insensitive: bool
    aliases: Mapping[str, str]
    ours: frozenset[str] = frozenset()


SPELLINGS: dict[object, Spelling] = {
    BalancingType: Spelling(
        case_insensitive=True,
        aliases={
            "round_robin": "round-robin",
            "rr": "round-robin",
            "consistent_hash": "consistent-hash",
            "ch": "consistent-hash",
            "least_connections": "least-connections",
            "lc": "least-connections",
            "latency_aware": "latency-aware",
            "la": "latency-aware",
            "sticky_cid": "sticky-cid",
            "cid-sticky": "sticky-cid",
            "cid_sticky": "sticky-cid",
        },
    ),
    HostPolicyMode: Spelling(
        case_insensitive=False,
        aliases={
            "pass_through": "pass-through",
            "static_upstream": "upstream",
            "static-upstream": "upstream",
            "upstream-host": "upstream",
        },
    ),
    LogLevel: Spelling(
        case_insensitive=True,
        aliases={
            "silence": "off",
            "poltergeist": "error",
            "scream": "warn",
            "spooky": "info",
            "haunt": "debug",
            "whisper": "trace",
            "warning": "warn",
        },
        ours=frozenset({"warning"}),
    ),
}


def choices(literal: object) -> tuple[str, ...]:
    """The canonical values of an enum ``Literal``."""
    return tuple(str(value) for value in typing.get_args(literal))


def canonical(literal: object, written: str) -> str | None:
    """The canonical value ``written`` means for the enum ``literal``, or None if it is not
    an accepted spelling."""
    spelling = SPELLINGS.get(literal)
    values = choices(literal)
    if spelling is None:
        return written if written in values else None
    key = written.strip().lower() if spelling.case_insensitive else written
    if key in values:
        return key
    return spelling.aliases.get(key)


def is_ours(literal: object, written: str) -> bool:
    """True when ``written`` is an accepted spelling that Spooky would reject: one of
    :attr:`Spelling.ours`, or a case-insensitive value with whitespace around it."""
    spelling = SPELLINGS.get(literal)
    if spelling is None or canonical(literal, written) is None:
        return False
    if not spelling.case_insensitive:
        return written in spelling.ours
    return written != written.strip() or written.strip().lower() in spelling.ours


def near_miss(literal: object, written: str) -> str | None:
    """For an exact enum, the value ``written`` misses only by case or by ``-`` for ``_``
    (or the reverse), to name in the error; None otherwise."""
    if literal in SPELLINGS:
        return None

    def fold(text: str) -> str:
        return text.strip().lower().replace("-", "_")

    return next((value for value in choices(literal) if fold(value) == fold(written)), None)


def describe_choices(literal: object) -> str:
    """The accepted spellings for an error message: each value with its aliases."""
    spelling = SPELLINGS.get(literal)
    parts: list[str] = []
    for value in choices(literal):
        others = sorted(a for a, c in spelling.aliases.items() if c == value) if spelling else []
        parts.append(f"{value} (or {', '.join(others)})" if others else value)
    text = ", ".join(parts)
    if spelling is not None and spelling.case_insensitive:
        text += "; any case"
    return text
