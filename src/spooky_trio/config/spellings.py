"""Accepted spellings of enumerated values: Spooky's exact rules (spooky-head.md section 3).

An enumerated schema field is typed with a ``Literal`` of its canonical values; the
structuring hook (:mod:`spooky_trio.config.convert`) asks :func:`canonical` for the value a
written spelling means. A ``Literal`` without an entry in :data:`SPELLINGS` accepts exactly
its canonical values, case-sensitively, as Spooky does for every enum it has no alias
table for (``log.format``, ``forwarded_headers.mode``, ``listen.protocol``, ...).

Case rules follow Spooky, value by value: ``load_balancing.type`` is trimmed and
case-insensitive (Spooky lower-cases it before its alias match), ``log.level`` is
case-insensitive, ``host_policy.mode`` is exact (serde names plus three aliases).
A spelling listed in :attr:`Spelling.ours` is accepted here but not by Spooky;
``spooky-trio check --spooky-strict`` reports it (:mod:`spooky_trio.config.portability`).
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
    """True when ``written`` is an accepted spelling that Spooky would reject."""
    spelling = SPELLINGS.get(literal)
    if spelling is None:
        return False
    key = written.strip().lower() if spelling.case_insensitive else written
    return key in spelling.ours


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
