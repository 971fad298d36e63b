"""DNS refresh through the real proxy: a tiny DNS server on 127.0.0.1 moves a backend name
from 127.0.0.1 to 127.0.0.2, where another hypercorn backend listens on the same port."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.proxy import proxy_yaml, running_proxy


@attrs.define
class DnsServer:
    """Answers A queries from ``records`` (name -> addresses); unknown names get NXDOMAIN,
    AAAA an empty answer. ``servfail`` makes every answer SERVFAIL."""

    records: dict[str, list[str]]
    port: int = 0
    servfail: bool = False
    answered: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                data, peer = await sock.recvfrom(4096)
                await sock.sendto(self._answer(dns.message.from_wire(data)).to_wire(), peer)
                self.answered += 1
                changed, self._changed = self._changed, trio.Event()
                changed.set()

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text_list(question.name, 1, "IN", "A", self.records[name]))
        return response

    async def wait_answered(self, n: int) -> None:
        while self.answered < n:
            await self._changed.wait()


async def backend_of(client: H3Client, path: str = "/echo") -> str:
    response = await client.request("GET", path, authority="localhost")
    assert response.status == 200, response.body
    return str(json.loads(response.body)["backend"])


async def test_traffic_follows_a_changed_address_without_failures(certs_dir: Path) -> None:
    dns_server = DnsServer({"app.test": ["127.0.0.1"]})
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        async with run_backend(name="old") as old, run_backend(name="new", host="127.0.0.2", port=old.port) as new:
            upstream = f"""
            app:
              route: {{path_prefix: "/"}}
              backends:
                - id: app
                  address: "http://app.test:{old.port}"
            """
            extra = f"""
            performance:
              backend_dns_refresh_enabled: true
              backend_dns_refresh_interval_ms: 100
              backend_dns_nameservers: ["127.0.0.1:{dns_server.port}"]
            """
            async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server:
                state = server.generation.pools["app"].backends[0].state
                # the first resolution finished before the server reported ready
                assert state.connect_address == "127.0.0.1"
                async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as client:
                    assert [await backend_of(client) for _ in range(3)] == ["old"] * 3
                    async with trio.open_nursery() as requests:
                        slow: list[int] = []

                        async def slow_request() -> None:
                            slow.append((await client.request("GET", "/slow/300", authority="localhost")).status)

                        requests.start_soon(slow_request)
                        await old.wait_for_requests(4)  # the slow request is in flight on "old"
                        dns_server.records["app.test"] = ["127.0.0.2"]
                        seen = []
                        with trio.fail_after(10):
                            while state.connect_address != "127.0.0.2":
                                seen.append(await backend_of(client))  # every request succeeds meanwhile
                        # a request racing the switch may already reach "new"; never back to "old"
                        assert seen == sorted(seen, key=["old", "new"].index)
                        assert [await backend_of(client) for _ in range(5)] == ["new"] * 5
                    # the in-flight request finished on its old connection
                    assert slow == [200] and old.requests[3]["path"] == "/slow/300"
                    assert state.addresses == {"127.0.0.2"} and state.dns_failures == 0

                    # resolution failures keep the last good address
                    dns_server.servfail = True
                    await dns_server.wait_answered(dns_server.answered + 4)  # two full failed refreshes
                    assert state.dns_failures >= 1 and state.connect_address == "127.0.0.2"
                    assert [await backend_of(client) for _ in range(3)] == ["new"] * 3
        nursery.cancel_scope.cancel()
