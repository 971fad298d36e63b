"""A Generation: one validated config compiled into what requests use (routes, pools, TLS).

A request takes the current generation once, at its start, and uses it to the end; a reload
builds a new one beside it and swaps one reference.
"""

from __future__ import annotations

from typing import Any

import attrs

from spooky_trio.routing.table import RoutingTable
from spooky_trio.upstream import BackendTarget, make_client_ssl_context


@attrs.frozen
class BackendRuntime:
    """One backend as requests see it; ``key`` is its identity across reloads."""

    pool: str
    id: str
    weight: int
    target: BackendTarget
    #: ``host[:port]`` as the backend names itself (host_policy ``upstream``)
    authority: bytes

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        t = self.target
        return (self.pool, self.id, t.scheme, t.host, t.port)


class PoolRuntime:
    """A pool's backends and policies. Balancing here is weighted round-robin."""

    def __init__(self, name: str, config: Any, backends: list[BackendRuntime]) -> None:
        self.name = name
        self.config = config
        self.backends = backends
        # smooth weighted round-robin (nginx): deterministic, weights honoured over each cycle
        self._current = [0] * len(backends)
        self._total = sum(b.weight for b in backends)

    def pick(self) -> BackendRuntime:
        best = 0
        for i, backend in enumerate(self.backends):
            self._current[i] += backend.weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self.backends[best]


def _format_authority(host: str, port: int, default_port: int) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    return (shown if port == default_port else f"{shown}:{port}").encode("ascii")


def _backend_target(address: Any, tls_policy: Any) -> BackendTarget:
    if address.scheme == "http":
        return BackendTarget(scheme="http", host=address.host, port=address.port)
    ctx = make_client_ssl_context(
        verify=tls_policy.verify_certificates,
        ca_file=tls_policy.ca_file,
        ca_dir=tls_policy.ca_dir,
    )
    return BackendTarget(
        scheme="https",
        host=address.host,
        port=address.port,
        ssl_context=ctx,
        server_name=address.host if tls_policy.strict_sni else None,
    )


class Generation:
    """An immutable compiled config. Build with :meth:`build`; never mutate after."""

    def __init__(self, number: int, config: Any, routing: RoutingTable, pools: dict[str, PoolRuntime]) -> None:
        self.number = number
        self.config = config
        self.routing = routing
        self.pools = pools

    @classmethod
    def build(cls, config: Any, number: int = 1) -> Generation:
        pools: dict[str, PoolRuntime] = {}
        for name, pool in config.upstream.items():
            tls_policy = pool.tls if pool.tls is not None else config.upstream_tls
            backends = []
            for backend in pool.backends:
                address = backend.parsed_address
                backends.append(
                    BackendRuntime(
                        pool=name,
                        id=backend.id,
                        weight=backend.weight,
                        target=_backend_target(address, tls_policy),
                        authority=_format_authority(address.host, address.port, 80 if address.scheme == "http" else 443),
                    )
                )
            pools[name] = PoolRuntime(name, pool, backends)
        return cls(number, config, RoutingTable.from_pools(config.upstream), pools)
