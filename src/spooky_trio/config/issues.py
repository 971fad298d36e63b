"""Configuration problems: :class:`ConfigIssue`, :class:`ConfigError` and source positions.

A *key path* is a tuple of mapping keys (``str``) and sequence indices (``int``), e.g.
``("upstream", "api", "backends", 1, "weight")``. It is rendered for humans as
``upstream.api.backends[1].weight``; keys that are not plain identifiers (path prefixes
such as ``/v1`` used as map keys) are rendered in brackets: ``caps["/v1"]``.

:class:`PositionMap` remembers where every key and value of the YAML document was written,
so problems found after structuring (range and cross-field rules, missing files) can still
point at a line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Union

import attrs

PathElement = Union[str, int]
KeyPath = tuple[PathElement, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def format_path(path: KeyPath) -> str:
    """Render ``path`` as ``a.b[1].c``; the empty path renders as ``""``."""
    out: list[str] = []
    for element in path:
        if isinstance(element, int):
            out.append(f"[{element}]")
        elif isinstance(element, str) and _PLAIN_KEY.fullmatch(element):
            out.append(f".{element}" if out else element)
        else:  # YAML also allows null, float, ... keys: render them quoted instead of crashing
            escaped = str(element).replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)


@attrs.frozen
class ConfigIssue:
    """One problem in a configuration.

    ``path`` is the rendered key path (``""`` for problems with the file as a whole);
    ``line``/``column`` are 1-based and ``None`` when unknown.
    """

    path: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        parts: list[str] = []
        if self.path:
            parts.append(self.path)
        if self.line is not None:
            parts.append(f"line {self.line} col {self.column}" if self.column is not None else f"line {self.line}")
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """A configuration could not be loaded; ``issues`` lists every problem found (never empty)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


@attrs.frozen
class SourcePosition:
    """Where a key and its value were written (1-based line/column pairs)."""

    key_line: int
    key_column: int
    value_line: int
    value_column: int
    is_container: bool


class PositionMap:
    """Maps key paths to :class:`SourcePosition` and turns (path, message) into issues."""

    def __init__(self, positions: Mapping[KeyPath, SourcePosition] | None = None) -> None:
        self._positions: dict[KeyPath, SourcePosition] = dict(positions or {})

    def __contains__(self, path: object) -> bool:
        return path in self._positions

    def __len__(self) -> int:
        return len(self._positions)

    def as_dict(self) -> dict[KeyPath, SourcePosition]:
        """A copy of the recorded positions."""
        return dict(self._positions)

    def add(self, path: KeyPath, position: SourcePosition) -> None:
        """Record the position of ``path`` (the first record wins)."""
        self._positions.setdefault(path, position)

    def locate(self, path: KeyPath, *, at_key: bool = False) -> tuple[int | None, int | None]:
        """Best line/column for a problem at ``path``.

        Scalars point at the value, containers (and ``at_key=True``) at the key. A path that
        is not in the document (a defaulted or missing key) points at its nearest written
        ancestor's key; nothing written at all gives ``(None, None)``.
        """
        position = self._positions.get(path)
        if position is not None:
            if at_key or position.is_container:
                return position.key_line, position.key_column
            return position.value_line, position.value_column
        for cut in range(len(path) - 1, -1, -1):
            ancestor = self._positions.get(path[:cut])
            if ancestor is not None:
                return ancestor.key_line, ancestor.key_column
        return None, None

    def issue(
        self, path: KeyPath, message: str, *, at_key: bool = False, related: Iterable[KeyPath] = ()
    ) -> ConfigIssue:
        """A :class:`ConfigIssue` for ``path`` with its best known position.

        When ``path`` itself was not written (its value is a default), the first of the
        ``related`` paths that was written gives the position instead.
        """
        if path not in self._positions:
            for other in related:
                if other in self._positions:
                    line, column = self.locate(other, at_key=at_key)
                    return ConfigIssue(format_path(path), line, column, message)
        line, column = self.locate(path, at_key=at_key)
        return ConfigIssue(format_path(path), line, column, message)


def sort_issues(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    """Deduplicate and order issues as they appear in the file (unknown positions last)."""
    unique = dict.fromkeys(issues)
    big = 1 << 30
    return sorted(unique, key=lambda i: (i.line if i.line is not None else big, i.column or 0, i.path, i.message))
