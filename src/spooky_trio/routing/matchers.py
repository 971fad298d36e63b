"""Header, query and cookie matchers of a route (extensions.md section 1), compiled once per
generation from validated config.

What a matcher reads of a request (``MatchRequest``: the head's fields and target):

* ``header``: every field named ``name`` (any case; names are lower case on the request).
  It matches when any field's value matches, or the values joined (``, ``; ``; `` for
  ``cookie``) do: a field split over several lines matches as one;
* ``query``: every ``name=value`` pair of the query (the target after ``?``, split on
  ``&``) whose name is exactly ``name``; a pair without ``=`` has the empty value. Names and
  values are compared as sent, not percent-decoded (like Spooky's ``query:NAME`` keys);
* ``cookie``: every ``name=value`` pair of every ``cookie`` field (``a=1; b=2``, split on
  ``;`` and trimmed) whose name is exactly ``name`` (cookie names are case-sensitive,
  RFC 6265); a pair without ``=`` is skipped.

``exact``, ``prefix`` and ``suffix`` compare bytes (the configured text is ASCII),
``regex`` must match the whole value (``re.fullmatch``; the value decoded as UTF-8 with
undecodable bytes kept apart, so they never equal a configured character) and
``present`` asks whether any value exists. ``invert`` negates the result, a missing field
included: ``{name: user-agent, regex: ".*Mobile.*", invert: true}`` also takes a request
without a ``user-agent``.

A regular expression runs on client data: the patterns are the operator's, and a pattern
with nested quantifiers can take long on a hostile value (docs/traffic-policy.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal, Protocol

from spooky_trio.config.schema_traffic import MatcherConfig

Source = Literal["header", "query", "cookie"]


class MatchRequest(Protocol):
    """What matchers read; ``DownstreamRequest`` has it."""

    path: bytes
    headers: list[tuple[bytes, bytes]]


class Matcher:
    """One compiled matcher (module docstring). ``label`` (``header:x-canary``) names it in
    metrics; :meth:`describe` in words (without its value: the decision header is sent to
    clients)."""

    __slots__ = ("source", "name", "kind", "value", "invert", "label", "_name", "_value", "_regex")

    def __init__(self, source: Source, config: MatcherConfig) -> None:
        self.source = source
        self.name = config.name.lower() if source == "header" else config.name
        kinds = config.kinds()
        self.kind = kinds[0] if kinds else "present"
        present = config.present
        raw: str | None = None if self.kind == "present" else getattr(config, self.kind)
        self.value = raw
        #: ``present: false`` is an inverted ``present: true``
        self.invert = config.invert != (present is False) if self.kind == "present" else config.invert
        self.label = f"{source}:{self.name}"
        self._name = self.name.encode("utf-8")
        self._value = raw.encode("utf-8") if raw is not None else b""
        self._regex = re.compile(raw) if self.kind == "regex" and raw is not None else None

    def identity(self) -> tuple[str, str, str, str | None, bool]:
        """(source, name, kind, value, inverted): equal matchers match the same requests."""
        return (self.source, self.name, self.kind, self.value, self.invert)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Matcher) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())

    def __repr__(self) -> str:
        return f"Matcher{self.identity()!r}"

    def describe(self) -> str:
        """``header x-canary`` / ``query debug present`` / ``cookie beta prefix``; ``not``
        in front when inverted."""
        kind = "" if self.kind in ("exact", "regex") else f" {self.kind}"
        text = f"{self.source} {self.name}{kind}"
        return f"not {text}" if self.invert else text

    def matches(self, request: MatchRequest) -> bool:
        """Whether ``request`` satisfies this matcher (``invert`` applied)."""
        return self._holds(request) != self.invert

    def _holds(self, request: MatchRequest) -> bool:
        if self.source == "header":  # the common case, without a generator
            name = self._name
            values = [value for field, value in request.headers if field == name]
        else:
            values = list(self._values(request))
        if self.kind == "present":
            return bool(values)
        if len(values) > 1 and self.source == "header":
            values.append((b"; " if self._name == b"cookie" else b", ").join(values))
        kind, want = self.kind, self._value
        if kind == "exact":
            return want in values
        if kind == "prefix":
            return any(value.startswith(want) for value in values)
        if kind == "suffix":
            return any(value.endswith(want) for value in values)
        regex = self._regex
        assert regex is not None
        return any(regex.fullmatch(value.decode("utf-8", "surrogateescape")) is not None for value in values)

    def _values(self, request: MatchRequest) -> Iterator[bytes]:
        name = self._name
        if self.source == "query":
            _, mark, query = request.path.partition(b"?")
            if mark:
                for pair in query.split(b"&"):
                    key, _, value = pair.partition(b"=")
                    if key == name:
                        yield value
        else:
            for field, header in request.headers:
                if field == b"cookie":
                    for pair in header.split(b";"):
                        key, eq, value = pair.partition(b"=")
                        if eq and key.strip() == name:
                            yield value.strip()


def compile_matchers(headers: list[MatcherConfig], query: list[MatcherConfig], cookies: list[MatcherConfig]) -> tuple[Matcher, ...]:
    """A route's matchers, compiled in the order written (headers, query, cookies)."""
    return tuple(
        [Matcher("header", m) for m in headers] + [Matcher("query", m) for m in query] + [Matcher("cookie", m) for m in cookies]
    )
