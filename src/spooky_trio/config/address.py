"""Address syntax shared by the schema and the validator.

:func:`parse_backend_address` is the single authority on what a backend ``address`` means:
``http://host[:port]`` is HTTP/1.1 (port 80), ``https://host[:port]`` is HTTP/2 over TLS
(port 443), and ``host:port`` or a bare ``host`` mean ``https://``. IPv6 literals must be
written in brackets (``[::1]:8443``).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?$")
_STRICT_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@attrs.frozen
class BackendAddress:
    """A parsed backend address. ``host`` never has brackets, even for IPv6."""

    scheme: str
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is an IPv4 or IPv6 literal (verification uses the IP, not a name)."""
        return is_ip_literal(self.host)

    @property
    def authority(self) -> str:
        """``host:port`` with IPv6 hosts bracketed, as used in ``Host``/``:authority``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_ip_literal(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no brackets, no zone check beyond ``ipaddress``)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str, *, allow_underscore: bool = True) -> bool:
    """True for a DNS host name (labels of letters, digits and hyphens; at most 253 chars).

    Underscores are accepted by default because internal service names use them.
    """
    if not text or len(text) > 253 or text.endswith("."):
        return False
    label = _LABEL if allow_underscore else _STRICT_LABEL
    return all(label.fullmatch(part) for part in text.split("."))


def is_token(text: str) -> bool:
    """True for an HTTP token (header names, method names, cookie names)."""
    return bool(_TOKEN.fullmatch(text))


def parse_port(text: str) -> int:
    """Parse a decimal port 1..65535 or raise ``ValueError``."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid port {text!r}: must be a number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}: must be 1-65535")
    return port


def split_host_port(authority: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` / ``[v6][:port]`` into host (no brackets) and the port text or None.

    Raises ``ValueError`` for unbalanced brackets or an unbracketed IPv6 literal.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("missing ']' after IPv6 literal")
        host, rest = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, rest[1:]
    if authority.count(":") > 1:
        raise ValueError("IPv6 literals must be written in brackets, e.g. [::1]:8443")
    if ":" in authority:
        host, port = authority.split(":", 1)
        return host, port
    return authority, None


def parse_backend_address(address: str) -> BackendAddress:
    """Parse a backend ``address`` (see module docstring) or raise ``ValueError`` saying why.

    Rejected: other schemes, userinfo (``user@``), paths other than ``""``/``"/"``, queries,
    fragments, whitespace, empty or invalid hosts, unbracketed IPv6 and ports outside 1..65535.
    """
    if not isinstance(address, str):
        raise ValueError(f"address must be a string, got {type(address).__name__}")
    if not address:
        raise ValueError("address is empty")
    if any(ch.isspace() for ch in address):
        raise ValueError(f"address {address!r} contains whitespace")
    scheme = "https"
    rest = address
    if "://" in address:
        raw_scheme, rest = address.split("://", 1)
        scheme = raw_scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {raw_scheme!r} in {address!r}: use http:// or https://")
    for mark, what in (("?", "a query"), ("#", "a fragment")):
        if mark in rest:
            raise ValueError(f"address {address!r} must not contain {what}")
    authority, slash, path = rest.partition("/")
    if slash and path:
        raise ValueError(f"address {address!r} must not contain a path (only '/' is allowed)")
    if "@" in authority:
        raise ValueError(f"address {address!r} must not contain userinfo ('user@')")
    host, port_text = split_host_port(authority)
    if not host:
        raise ValueError(f"address {address!r} has no host")
    if not (is_ip_literal(host) or is_hostname(host)):
        raise ValueError(f"address {address!r}: {host!r} is not a valid host name or IP address")
    if port_text is None:
        port = 80 if scheme == "http" else 443
    else:
        port = parse_port(port_text)
    return BackendAddress(scheme=scheme, host=host, port=port)


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse a resolver ``ip``, ``ip:port`` or ``[ipv6]:port`` into ``(ip, port)`` (port 53 default)."""
    if is_ip_literal(text):
        return text, 53
    host, port_text = split_host_port(text)
    if not is_ip_literal(host):
        raise ValueError(f"{text!r} is not an IP address (expected ip, ip:port or [ipv6]:port)")
    return host, 53 if port_text is None else parse_port(port_text)


def is_loopback(address: str) -> bool:
    """True for a loopback IP literal or ``localhost`` (where an unauthenticated admin
    endpoint is acceptable)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
