"""``discovery.kind: dns_srv`` against a real DNS server (dnsmasq on a loopback port, named
by ``backend_dns_nameservers``), over HTTP/3, HTTP/2 and HTTP/1.1: the lowest priority
group serves, SRV weights are backend weights, SRV targets are resolved through the same
resolver settings before they take requests; NXDOMAIN keeps the set; a changed answer
moves the pool."""

from __future__ import annotations

import collections
from pathlib import Path

from tests.support.backends import run_backend
from tests.support.clients import proxy_clients
from tests.support.discovery import answered_by, pool_ids, wait_metric, wait_pool
from tests.support.dnsmasq import Srv, running_dnsmasq
from tests.support.proxy import proxy_yaml, running_proxy

NAME = "_app._tcp.test"
HOSTS = [("b1.test", "127.0.0.1"), ("b2.test", "127.0.0.1"), ("b3.test", "127.0.0.1")]


async def test_priorities_weights_nxdomain_and_a_changed_answer(certs_dir: Path) -> None:
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2, run_backend(name="b3") as b3:
        records = [Srv(NAME, "b1.test", b1.port, priority=10, weight=1), Srv(NAME, "b2.test", b2.port, priority=10, weight=3),
                   Srv(NAME, "b3.test", b3.port, priority=20, weight=5)]
        async with running_dnsmasq(records, HOSTS) as dns:
            upstream = f"""
            app:
              route: {{path_prefix: "/"}}
              discovery: {{kind: dns_srv, name: "{NAME}", scheme: http, refresh_ms: 200}}
            """
            extra = f"""
            performance:
              backend_dns_refresh_enabled: true
              backend_dns_refresh_interval_ms: 200
              backend_dns_nameservers: ["{dns.nameserver}"]
            """
            async with (running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server,
                        proxy_clients(server.listeners[0].port, certs_dir) as clients):
                one, three = f"b1.test:{b1.port}", f"b2.test:{b2.port}"
                assert pool_ids(server) == [one, three]  # priority 10 only
                backends = server.generation.pools["app"].backends
                assert [b.weight for b in backends] == [1, 3]
                assert all(b.state.connect_address == "127.0.0.1" for b in backends)  # resolved through dnsmasq
                assert collections.Counter(await answered_by(clients, 8)) == {"b1": 2, "b2": 6}

                await dns.serve([], HOSTS)  # the SRV name is gone: NXDOMAIN
                await wait_metric(server, "spooky_discovery_errors_total", 2, upstream="app", source="dns_srv", reason="not_found")
                assert pool_ids(server) == [one, three]  # last known good
                assert collections.Counter(await answered_by(clients, 4)) == {"b1": 1, "b2": 3}

                await dns.serve([Srv(NAME, "b3.test", b3.port, priority=20, weight=5)], HOSTS)  # only the backup group
                await wait_pool(server, lambda ids: ids == [f"b3.test:{b3.port}"])
                assert server.generation.pools["app"].backends[0].weight == 5
                assert await answered_by(clients, 3) == ["b3"] * 3

