"""Problem collection helpers shared by the validation modules."""

from __future__ import annotations

import attrs

from spooky_trio.config.address import (
    is_hostname,
    is_ip_literal,
    parse_port,
    split_host_port,
)
from spooky_trio.config.issues import KeyPath


@attrs.frozen
class Problem:
    """A rule violation at ``path``; ``related`` lists other paths the rule depends on.

    The loader drops a problem when any of its paths overlaps a value it had to discard
    because of a type error (the rule was then evaluated against a default, not the file).
    """

    path: KeyPath
    message: str
    related: tuple[KeyPath, ...] = ()

    def paths(self) -> tuple[KeyPath, ...]:
        """``path`` followed by ``related``."""
        return (self.path, *self.related)


class Problems:
    """An append-only list of :class:`Problem` with small range-check helpers."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: KeyPath, message: str, *related: KeyPath) -> None:
        """Record a problem at ``path``."""
        self.items.append(Problem(path, message, tuple(related)))

    def at_least(self, path: KeyPath, value: int | float, minimum: int | float) -> None:
        """Require ``value >= minimum``."""
        if value < minimum:
            self.add(path, f"must be >= {minimum} (got {value})")

    def positive(self, path: KeyPath, value: int | float) -> None:
        """Require ``value > 0``."""
        if value <= 0:
            self.add(path, f"must be > 0 (got {value})")

    def between(self, path: KeyPath, value: int | float, low: int | float, high: int | float) -> None:
        """Require ``low <= value <= high``."""
        if not low <= value <= high:
            self.add(path, f"must be between {low} and {high} (got {value})")

    def port(self, path: KeyPath, value: int) -> None:
        """Require a TCP/UDP port 1..65535."""
        if not 1 <= value <= 65535:
            self.add(path, f"must be a port between 1 and 65535 (got {value})")

    def http_path(self, path: KeyPath, value: str) -> None:
        """Require an absolute request path (starts with ``/``, no whitespace)."""
        if not value.startswith("/") or any(ch.isspace() for ch in value):
            self.add(path, f"must be a path starting with '/' (got {value!r})")

    def not_empty(self, path: KeyPath, value: str) -> None:
        """Require a non-blank string."""
        if not value.strip():
            self.add(path, "must not be empty")

    def bind_address(self, path: KeyPath, value: str, *, allow_localhost: bool = False) -> None:
        """Require an IPv4/IPv6 literal (optionally also the name ``localhost``)."""
        if is_ip_literal(value) or (allow_localhost and value == "localhost"):
            return
        hint = " or 'localhost'" if allow_localhost else ""
        self.add(path, f"must be an IPv4 or IPv6 address{hint} (got {value!r})")


def route_host_error(host: str) -> str | None:
    """Why ``host`` is not a valid route host (exact name or leading ``*.`` wildcard), or None."""
    if not host:
        return "must not be empty"
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        return f"invalid host {host!r}: a wildcard is only allowed as a leading '*.'"
    if ":" in name and not is_ip_literal(name):
        return f"invalid host {host!r}: must not include a port"
    if not (is_hostname(name) or (name is host and is_ip_literal(name))):
        return f"invalid host {host!r}: not a valid host name"
    return None


def authority_error(text: str) -> str | None:
    """Why ``text`` is not a ``host[:port]`` authority (IPv6 in brackets) that can be sent
    as the upstream Host / ``:authority`` (ASCII, no whitespace or controls), or None."""
    if not text.isascii() or not text.isprintable() or " " in text:
        return f"invalid host {text!r}: must be an ASCII host name or IP address with an optional :port"
    try:
        host, port_text = split_host_port(text)
        if port_text is not None:
            parse_port(port_text)
    except ValueError as exc:
        return f"invalid host {text!r}: {exc}"
    if not (is_hostname(host) or is_ip_literal(host)):
        return f"invalid host {text!r}: not a valid host name or IP address"
    return None
