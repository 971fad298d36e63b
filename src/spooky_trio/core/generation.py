"""A Generation: one validated config compiled into what requests use (routes, pools, TLS).

A request takes the current generation once, at its start, and uses it to the end; a reload
builds a new one beside it and swaps one reference. The one thing that changes inside a live
generation is the set of backends of a pool whose backends are dynamic (a discovery source,
the admin API): :meth:`Generation.refresh` swaps a pool's backends and balancer together.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence

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
    #: where it comes from: ``config``, a discovery kind (``file``, ``dns_srv``, ``etcd``) or ``admin``
    origin: str = attrs.field(default="config", eq=False)

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
    """A pool's backends, its balancer and its policies (``config`` is the PoolConfig).

    ``backends`` and ``balancer`` change together when the pool's dynamic backends change
    (discovery, the admin API: :meth:`Generation.refresh`), in one step between two
    requests' reads; ``version`` is the :class:`~spooky_trio.discovery.membership.DiscoveryState`
    version they were built at. A request reads both in one synchronous step (admission's
    ``pick``), so it never pairs one set's indices with another's balancer.
    """

    def __init__(self, name: str, config: PoolConfig, backends: list[BackendRuntime], balancer: Balancer, version: int = 0) -> None:
        self.name = name
        self.config = config
        self.backends = backends
        self.balancer = balancer
        self.version = version


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
    """A compiled config. Build with :meth:`build`; nothing in it changes afterwards except
    the backends of a pool whose dynamic backends changed (:meth:`refresh`)."""

    def __init__(self, number: int, config: Config, routing: RoutingTable, pools: dict[str, PoolRuntime],
                 state: StateStore | None = None, rng: random.Random | None = None) -> None:
        self.number = number
        self.config = config
        self.routing = routing
        self.pools = pools
        self._state = state if state is not None else StateStore()
        self._rng = rng
        #: TLS context per TLS policy, for backends added after the build (built on first use)
        self._contexts: dict[tuple[int, str], ssl.SSLContext] = {}

    @classmethod
    def build(
        cls, config: Config, number: int = 1, state: StateStore | None = None, rng: random.Random | None = None, *, activate: bool = True
    ) -> Generation:
        """Compile ``config``. Backend state comes from ``state`` (the Server's store, so it
        survives reloads; a private store when None) and is reconfigured with each backend's
        health_check (:meth:`activate`). ``rng`` seeds ``random`` balancers (tests). A pool's
        backends are those :meth:`DiscoveryState.backends` gives (config, discovery, admin).

        A reload builds with ``activate=False`` so that a transaction that fails later
        (a listener that cannot bind) leaves the running backends' settings untouched, and
        calls :meth:`activate` at its commit point."""
        store = state if state is not None else StateStore()
        generation = cls(number, config, RoutingTable.from_pools(config.upstream), {}, store, rng)
        for name, pool in config.upstream.items():
            backends = generation._runtimes(name, pool, ())
            generation.pools[name] = PoolRuntime(name, pool, backends, generation._balancer(pool, backends),
                                                 store.discovery.version(name))
        if activate:
            generation.activate()
        return generation

    def _runtimes(self, name: str, pool: PoolConfig, previous: Sequence[BackendRuntime]) -> list[BackendRuntime]:
        """The backends of pool ``name`` now; an unchanged one keeps its object from ``previous``."""
        store = self._state
        tls_policy = pool.tls if pool.tls is not None else self.config.upstream_tls
        kept = {(b.key, b.weight, b.health_check, b.origin): b for b in previous}
        backends = []
        for backend, origin in store.discovery.backends(name, pool):
            address = backend.parsed_address
            target = _backend_target(address, pool.effective_protocol(address.scheme), tls_policy, store.client_tls, self._contexts)
            key = backend_key(name, backend.id, target)
            same = kept.get((key, backend.weight, backend.health_check, origin))
            if same is not None and store.get(key) is same.state:  # (not a state forgotten since)
                backends.append(same)
                continue
            backends.append(
                BackendRuntime(
                    pool=name,
                    id=backend.id,
                    weight=backend.weight,
                    target=target,
                    authority=_format_authority(address.host, address.port, 80 if address.scheme == "http" else 443),
                    state=store.backend(key, f"{name}/{backend.id}"),
                    health_check=backend.health_check,
                    origin=origin,
                )
            )
        return backends

    def _balancer(self, pool: PoolConfig, backends: list[BackendRuntime]) -> Balancer:
        lb = pool.effective_load_balancing(self.config.load_balancing)
        if not backends:  # a discovered pool before its first answer: requests get 503, never a pick
            return make_balancer("round-robin", None, ids=[], weights=[], loads=[])
        return make_balancer(
            lb.type,
            lb.key,
            ids=[b.id for b in backends],
            weights=[b.weight for b in backends],
            loads=[b.state for b in backends],
            rng=self._rng,
        )

    def backends(self) -> list[BackendRuntime]:
        """Every backend of every pool."""
        return [backend for pool in self.pools.values() for backend in pool.backends]

    def stale_pools(self) -> list[tuple[PoolRuntime, list[BackendRuntime]]]:
        """The pools whose dynamic backends changed since they were built or refreshed, each
        with the backends it would have now; nothing changes yet (the serving layer starts
        the new backends' DNS refreshers and probes first, then calls :meth:`refresh`)."""
        discovery = self._state.discovery
        return [(pool, self._runtimes(name, pool.config, pool.backends))
                for name, pool in self.pools.items() if pool.version != discovery.version(name)]

    def refresh(self, beside: Generation | None = None, prepared: Sequence[BackendRuntime] = ()) -> list[PoolRuntime]:
        """Give each stale pool its current backends and a balancer over them, in one step
        (no checkpoint: a request sees the old set or the new one). A backend that is
        unchanged keeps its object (from the pool, or from ``prepared``, what
        :meth:`stale_pools` gave); a new one gets its health_check settings, unless
        ``beside`` (the stable generation, for a canary) shares it. Returns the pools that
        changed."""
        discovery = self._state.discovery
        shared = {id(b.state) for b in beside.backends()} if beside is not None else set()
        changed = []
        for name, pool in self.pools.items():
            version = discovery.version(name)
            if pool.version == version:
                continue
            backends = self._runtimes(name, pool.config, [*pool.backends, *prepared])
            before = {id(b) for b in pool.backends}
            for backend in backends:
                if id(backend) not in before and id(backend.state) not in shared:
                    backend.state.configure(backend.health_check)
            pool.backends, pool.balancer, pool.version = backends, self._balancer(pool.config, backends), version
            changed.append(pool)
        return changed

    def activate(self, beside: Generation | None = None) -> None:
        """Apply each backend's health_check to its long-lived state (keeps the verdicts).

        ``beside``: the stable generation a canary runs next to. Backends that generation
        shares (same state entry) keep the stable settings: a canary for N % of requests must
        not retune health checking for all of them (promote activates it fully)."""
        shared = {id(b.state) for b in beside.backends()} if beside is not None else set()
        for backend in self.backends():
            if id(backend.state) not in shared:
                backend.state.configure(backend.health_check)
