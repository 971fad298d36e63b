"""DNS refresh of hostname backends (``performance.backend_dns_refresh_*``).

One task per hostname backend re-resolves its name (A and AAAA) every
``backend_dns_refresh_interval_ms`` with dnspython's async resolver on Trio, using
``backend_dns_nameservers`` when set and the system resolvers otherwise. When the address
set changes the backend's connect address moves: the current address is kept while it is
still in the set (no needless reconnects); otherwise the lowest address wins (IPv4 before
IPv6), so every worker process converges on the same choice. The connect address is part of
the upstream pool's key, so new connections dial the new address while requests in flight
finish on their old connections, which the pool's idle reaper closes later. TLS
verification and SNI keep using the configured hostname.

A failed resolution (timeout, SERVFAIL, NXDOMAIN, no addresses) keeps the last good set,
is counted in ``BackendState.dns_failures`` and logged (a warning when a failure streak
starts, debug while it lasts, info when it ends).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import trio

from spooky_trio.config.address import parse_nameserver
from spooky_trio.health.targets import HealthMetrics, ProbeState

log = logging.getLogger("spooky.dns")


class DnsResolutionError(Exception):
    """A name resolved to no address (every query failed or answered nothing)."""


def make_resolver(nameservers: Sequence[str], lifetime: float) -> dns.asyncresolver.Resolver:
    """An async resolver that gives up on a query after ``lifetime`` seconds.

    ``nameservers`` are ``ip``, ``ip:port`` or ``[ipv6]:port`` strings; empty means the
    system configuration (``/etc/resolv.conf``), which raises dns.resolver.NoResolverConfiguration
    when there is none.
    """
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(text)) for text in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = lifetime
    resolver.timeout = lifetime
    return resolver


async def resolve_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> frozenset[str]:
    """Every A and AAAA address of ``host`` (queried concurrently); raises DnsResolutionError."""
    addresses: set[str] = set()
    errors: list[str] = []

    async def query(rdtype: str) -> None:
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except dns.resolver.NoAnswer:
            return  # the name exists but has no records of this type: normal for AAAA
        except (dns.exception.DNSException, OSError) as exc:
            errors.append(f"{rdtype}: {exc}")
            return
        addresses.update(record.address for record in answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(query, "A")
        nursery.start_soon(query, "AAAA")
    if not addresses:
        raise DnsResolutionError("; ".join(errors) or "no A or AAAA records")
    return frozenset(addresses)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def choose_address(addresses: frozenset[str], current: str | None) -> str:
    """``current`` while it is still in ``addresses``, else the lowest address (IPv4 first)."""
    if current in addresses:
        return current
    return min(addresses, key=_address_order)


class DnsRefresher:
    """Keeps one backend's ``connect_address`` in step with DNS; run it in the background nursery."""

    def __init__(self, *, state: ProbeState, host: str, resolver: dns.asyncresolver.Resolver, interval: float, metrics: HealthMetrics | None = None) -> None:
        #: a :class:`~spooky_trio.observability.metrics.Metrics` (or None) counting refreshes
        self.metrics = metrics
        self.state = state
        self.host = host
        self.resolver = resolver
        self.interval = interval
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve once, report started (so the first requests already use DNS), then every ``interval``."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Resolve now and apply the result; returns False when the resolution failed."""
        state = self.state
        try:
            addresses = await resolve_addresses(self.resolver, self.host)
        except DnsResolutionError as exc:
            state.dns_failures += 1
            if self.metrics is not None:
                self.metrics.dns_refresh(False, False)
            keep = ", ".join(sorted(state.addresses)) or "the system resolver"
            if not self._failing:
                log.warning("resolving %s for backend %s failed (%s); keeping %s", self.host, state.label, exc, keep)
            else:
                log.debug("resolving %s for backend %s still failing: %s", self.host, state.label, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("resolving %s for backend %s works again", self.host, state.label)
            self._failing = False
        if self.metrics is not None:
            self.metrics.dns_refresh(True, addresses != state.addresses)
        if addresses != state.addresses:
            chosen = choose_address(addresses, state.connect_address)
            if chosen != state.connect_address:
                log.info("backend %s: %s now resolves to %s; new connections go to %s", state.label, self.host, ", ".join(sorted(addresses, key=_address_order)), chosen)
            state.addresses = addresses
            state.connect_address = chosen
            state.on_change()
        return True
