"""Request protocol policy (``resilience.protocol``), checked once per request by the pipeline.

Order: ``allowed_methods`` (405) -> ``denied_path_prefixes`` (403) -> early data (425 for a
request that arrived in 0-RTT with a method outside ``early_data_safe_methods``) -> CONNECT
(405 unless ``allow_connect``; 403 unless the target passes the allowlists; 400 for a
target without a port). Header limits (431) are enforced earlier, by each ingress.

CONNECT allowlists: a target ``host:port`` is allowed when ``connect_allowed_authorities``
names it (an entry is ``host``, ``host:port`` or ``*.suffix``) and ``connect_allowed_ports``
is empty or lists its port. With no authorities every CONNECT is refused, whatever the
ports: a port list alone would make the edge an open relay into internal addresses.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from spooky_trio.config import ProtocolConfig
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.messages import DownstreamRequest


class _Counter(Protocol):
    def inc(self) -> None: ...


class EarlyDataMetrics(Protocol):
    """Where :func:`check_request` counts accepted early data (the server's Metrics)."""

    @property
    def early_data_accepted(self) -> _Counter: ...


@attrs.frozen(slots=True)
class ConnectTarget:
    """Where a permitted CONNECT tunnels to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_request(protocol: ProtocolConfig, request: DownstreamRequest, metrics: EarlyDataMetrics | None = None) -> ConnectTarget | None:
    """Apply ``protocol`` (a ``ProtocolConfig``) to ``request``.

    Returns the tunnel target of a permitted CONNECT, None for any other permitted request;
    raises :class:`ProxyError` (405, 403, 425, 400) otherwise. Counts accepted early data in
    ``metrics`` (rejections are counted by the pipeline from the 425 status).
    """
    method = request.method.decode("latin-1").upper()
    if protocol.allowed_methods and method not in protocol.allowed_methods:
        allowed = ", ".join(protocol.allowed_methods)
        raise ProxyError(405, "method_not_allowed", f"method {method} is not allowed here (allowed: {allowed})")
    connect = method == "CONNECT"
    if protocol.denied_path_prefixes and not connect:
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        for prefix in protocol.denied_path_prefixes:
            if path.startswith(prefix):
                raise ProxyError(403, "path_denied", "this path is not served")
    if request.early_data:
        if not protocol.allow_0rtt or method not in protocol.early_data_safe_methods:
            raise ProxyError(425, "too_early", f"{method} is not accepted in 0-RTT early data; retry after the handshake")
        if metrics is not None:
            metrics.early_data_accepted.inc()
    if not connect:
        return None
    if not protocol.allow_connect:
        raise ProxyError(405, "connect_not_allowed", "CONNECT is not allowed")
    target = parse_connect_authority(request.authority or request.host_header or b"")
    if not connect_permitted(protocol, target):
        raise ProxyError(403, "connect_target_denied", f"CONNECT to {target} is not permitted")
    return target


def parse_connect_authority(authority: bytes) -> ConnectTarget:
    """``host:port`` (``[v6]:port``) of a CONNECT request; raises :class:`ProxyError` 400."""
    text = authority.decode("latin-1").strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/@ "):
        raise ProxyError(400, "bad_connect_target", "CONNECT needs an authority of the form host:port")
    return ConnectTarget(host.lower(), int(port))


def connect_permitted(protocol: ProtocolConfig, target: ConnectTarget) -> bool:
    """Whether the allowlists admit ``target`` (see the module docstring)."""
    ports, authorities = protocol.connect_allowed_ports, protocol.connect_allowed_authorities
    # the authorities must name the targets: a port list alone would admit any host on
    # those ports (loopback, private ranges, 169.254.169.254...), an open relay inward
    if not authorities:
        return False
    if ports and target.port not in ports:
        return False
    return any(_authority_matches(entry.strip().lower(), target) for entry in authorities)


def _authority_matches(entry: str, target: ConnectTarget) -> bool:
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and "]" not in port:  # host:port / [v6]:port
        if int(port) != target.port:
            return False
        entry = host
    entry = entry.strip("[]")
    if entry.startswith("*."):
        return target.host.endswith(entry[1:])
    return target.host == entry
