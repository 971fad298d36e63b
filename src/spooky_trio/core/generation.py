"""A Generation: one validated config compiled into what requests use (routes, pools, TLS).

A request takes the current generation once, at its start, and uses it to the end; a reload
builds a new one beside it and swaps one reference.
"""

from __future__ import annotations

import random
import ssl

import attrs

from spooky_trio.balancing import Balancer, make_balancer
from spooky_trio.config import (
    BackendAddress,
    Config,
    HealthCheckConfig,
    PoolConfig,
    UpstreamTlsConfig,
)
from spooky_trio.core.state import BackendState, StateStore
from spooky_trio.routing.table import RoutingTable
from spooky_trio.upstream import BackendTarget
from spooky_trio.upstream.tls import ClientContexts


@attrs.frozen
class BackendRuntime:
    """One backend as requests see it; ``key`` is its identity across reloads.

    ``target`` is the configured target; ``state`` is the backend's long-lived entry in the
    Server's :class:`StateStore` (shared by every generation that has this backend).
    """

    pool: str
    id: str
    weight: int
    target: BackendTarget
    #: ``host[:port]`` as the backend names itself (host_policy ``upstream``)
    authority: bytes
    state: BackendState = attrs.field(eq=False, repr=False)
    #: the backend's ``health_check`` block, None when it is not actively probed
    health_check: HealthCheckConfig | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return backend_key(self.pool, self.id, self.target)

    @property
    def connect_target(self) -> BackendTarget:
        """Where new connections go: the DNS-refreshed target if any, else the configured one."""
        return self.state.connect_target(self.target)


def backend_key(pool: str, backend_id: str, target: BackendTarget) -> tuple[str, str, str, str, int]:
    """A backend's identity across reloads: same pool, id and configured address."""
    return (pool, backend_id, target.scheme, target.host, target.port)


class PoolRuntime:
    """A pool's backends, its balancer and its policies (``config`` is the PoolConfig)."""

    def __init__(self, name: str, config: PoolConfig, backends: list[BackendRuntime], balancer: Balancer) -> None:
        self.name = name
        self.config = config
        self.backends = backends
        self.balancer = balancer


def _format_authority(host: str, port: int, default_port: int) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    return (shown if port == default_port else f"{shown}:{port}").encode("ascii")


def _backend_target(
    address: BackendAddress, protocol: str, tls_policy: UpstreamTlsConfig, contexts: ClientContexts, built: dict[tuple[int, str], ssl.SSLContext]
) -> BackendTarget:
    """The target of one backend address spoken to in ``protocol`` (the pool's effective
    ``upstream_protocol``); ``built`` memoizes the context per TLS policy and ALPN for one
    generation build (each policy's CA files are read once per build). HTTP/1.1 over TLS
    offers ALPN ``http/1.1``; everything else ``h2`` (HTTP/3 takes only the trust of it)."""
    if address.scheme == "http":
        return BackendTarget(scheme="http", host=address.host, port=address.port, protocol=protocol)
    alpn = "http/1.1" if protocol == "h1" else "h2"
    ctx = built.get((id(tls_policy), alpn))
    if ctx is None:
        ctx = built[(id(tls_policy), alpn)] = contexts.get(
            verify=tls_policy.verify_certificates,
            ca_file=tls_policy.ca_file,
            ca_dir=tls_policy.ca_dir,
            alpn=(alpn,),
        )
    return BackendTarget(
        scheme="https",
        host=address.host,
        port=address.port,
        ssl_context=ctx,
        server_name=address.host if tls_policy.strict_sni else None,
        protocol=protocol,
    )


class Generation:
    """An immutable compiled config. Build with :meth:`build`; never mutate after."""

    def __init__(self, number: int, config: Config, routing: RoutingTable, pools: dict[str, PoolRuntime]) -> None:
        self.number = number
        self.config = config
        self.routing = routing
        self.pools = pools

    @classmethod
    def build(
        cls, config: Config, number: int = 1, state: StateStore | None = None, rng: random.Random | None = None, *, activate: bool = True
    ) -> Generation:
        """Compile ``config``. Backend state comes from ``state`` (the Server's store, so it
        survives reloads; a private store when None) and is reconfigured with each backend's
        health_check (:meth:`activate`). ``rng`` seeds ``random`` balancers (tests).

        A reload builds with ``activate=False`` so that a transaction that fails later
        (a listener that cannot bind) leaves the running backends' settings untouched, and
        calls :meth:`activate` at its commit point."""
        store = state if state is not None else StateStore()
        pools: dict[str, PoolRuntime] = {}
        contexts: dict[tuple[int, str], ssl.SSLContext] = {}
        for name, pool in config.upstream.items():
            tls_policy = pool.tls if pool.tls is not None else config.upstream_tls
            backends = []
            for backend in pool.backends:
                address = backend.parsed_address
                target = _backend_target(address, pool.effective_protocol(address.scheme), tls_policy, store.client_tls, contexts)
                backend_state = store.backend(backend_key(name, backend.id, target), f"{name}/{backend.id}")
                backends.append(
                    BackendRuntime(
                        pool=name,
                        id=backend.id,
                        weight=backend.weight,
                        target=target,
                        authority=_format_authority(address.host, address.port, 80 if address.scheme == "http" else 443),
                        state=backend_state,
                        health_check=backend.health_check,
                    )
                )
            lb = pool.effective_load_balancing(config.load_balancing)
            balancer = make_balancer(
                lb.type,
                lb.key,
                ids=[b.id for b in backends],
                weights=[b.weight for b in backends],
                loads=[b.state for b in backends],
                rng=rng,
            )
            pools[name] = PoolRuntime(name, pool, backends, balancer)
        generation = cls(number, config, RoutingTable.from_pools(config.upstream), pools)
        if activate:
            generation.activate()
        return generation

    def backends(self) -> list[BackendRuntime]:
        """Every backend of every pool."""
        return [backend for pool in self.pools.values() for backend in pool.backends]

    def activate(self, beside: Generation | None = None) -> None:
        """Apply each backend's health_check to its long-lived state (keeps the verdicts).

        ``beside``: the stable generation a canary runs next to. Backends that generation
        shares (same state entry) keep the stable settings: a canary for N % of requests must
        not retune health checking for all of them (promote activates it fully)."""
        shared = {id(b.state) for b in beside.backends()} if beside is not None else set()
        for backend in self.backends():
            if id(backend.state) not in shared:
                backend.state.configure(backend.health_check)
