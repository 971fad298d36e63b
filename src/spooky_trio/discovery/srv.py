"""``discovery.kind: dns_srv``: the SRV records of ``name``, with dnspython on Trio.

The resolver is the one the DNS refresh of backend hostnames uses (:func:`make_resolver`
of ``health/dns.py``): ``performance.backend_dns_nameservers`` when set (an entry may carry
a port), the system's resolvers otherwise; every query gives up after ``timeout_ms``.

Only the lowest priority group is used (RFC 2782: a client must try it first; the others
are for when all of it is unreachable, which health checks and passive ejection handle
within the pool). Each record becomes the backend ``scheme://target:port`` with id
``target:port`` (the target without its final dot) and the SRV weight as its weight (0,
RFC 2782's "no preference", becomes 1: a backend weight is at least 1); a target named by
two records of the group is one backend with the larger weight. The answer's TTL, when
shorter than ``refresh_ms``, brings the next query forward (at least :data:`MIN_TTL`
seconds later); ``refresh_ms`` is the longest it waits.

NXDOMAIN, an empty answer, a target of ``.`` ("no such service here"), a timeout or an
unreachable server keep the last good set.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.rdtypes.IN.SRV
import dns.resolver

from spooky_trio.config.address import parse_backend_address
from spooky_trio.config.backend_entries import BackendEntry
from spooky_trio.discovery.source import Answer, DiscoveryError
from spooky_trio.health.dns import make_resolver

#: the shortest pause an SRV TTL may ask for between queries (seconds)
MIN_TTL = 1.0


class SrvSource:
    """Queries one SRV name (module docstring)."""

    def __init__(self, name: str, scheme: str, nameservers: Sequence[str], timeout: float) -> None:
        self.name = name.removesuffix(".") + "."  # absolute: never the resolver's search list
        self.scheme = scheme
        self.nameservers = list(nameservers)
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = make_resolver(self.nameservers, self.timeout)
            except Exception as exc:  # noqa: BLE001 - no resolv.conf (dnspython raises its own types)
                raise DiscoveryError("unreachable", f"cannot configure a DNS resolver: {exc}") from None
        return self._resolver

    async def fetch(self) -> Answer:
        """The lowest priority group of ``name``'s SRV records (raises DiscoveryError)."""
        try:
            answer = await self._get_resolver().resolve(self.name, "SRV", search=False)
        except dns.resolver.NXDOMAIN:
            raise DiscoveryError("not_found", f"{self.name} does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise DiscoveryError("empty", f"{self.name} has no SRV records") from None
        except dns.exception.Timeout:
            raise DiscoveryError("timeout", f"no answer for {self.name} SRV within {self.timeout * 1000:.0f} ms") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DiscoveryError("unreachable", f"resolving {self.name} SRV failed: {exc}") from None
        records = [record for record in answer if isinstance(record, dns.rdtypes.IN.SRV.SRV)]
        entries = srv_entries(records, self.scheme)
        if not entries:
            raise DiscoveryError("empty", f"{self.name} names no usable target (\".\": no such service here)")
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else None
        return Answer(entries, None if ttl is None else max(MIN_TTL, ttl))


def srv_entries(records: Sequence[dns.rdtypes.IN.SRV.SRV], scheme: str) -> list[BackendEntry]:
    """The backends of the lowest priority group of ``records`` (module docstring), by id.
    Records that name no backend (target ``.``, port 0, a target that is no host name) are
    left out before the group is chosen."""
    usable: list[tuple[int, str, int, int]] = []
    for record in records:
        target = record.target.to_text(omit_final_dot=True).lower()
        if target in ("", ".", "@"):
            continue
        try:
            parse_backend_address(f"{scheme}://{target}:{record.port}")
        except ValueError:
            continue
        usable.append((int(record.priority), target, int(record.port), int(record.weight)))
    if not usable:
        return []
    lowest = min(priority for priority, _, _, _ in usable)
    weights: dict[tuple[str, int], int] = {}
    for priority, target, port, weight in usable:
        if priority == lowest:
            weights[(target, port)] = max(weights.get((target, port), 1), weight, 1)
    return [BackendEntry(id=f"{target}:{port}", address=f"{scheme}://{target}:{port}", weight=weight)
            for (target, port), weight in sorted(weights.items())]
