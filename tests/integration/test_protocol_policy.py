"""``resilience.protocol`` through the real proxy: method and path filters, CONNECT tunnels
over HTTP/3 and HTTP/2 to an allowlisted TCP target, 0-RTT early data with 425 Too Early."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from aioquic.tls import SessionTicket

from spooky_trio.clients.errors import H3StreamReset
from spooky_trio.clients.h3 import H3Client
from spooky_trio.proxy import tunnel
from tests.support.backends import run_backend, run_raw_backend
from tests.support.bootstrap import client_context, tls_connect
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy


async def _echo(stream: trio.SocketStream) -> None:
    """The CONNECT target: echoes bytes upper-cased, ends when the client ends."""
    while data := await stream.receive_some(65536):
        await stream.send_all(data.upper())
    await stream.send_eof()


def _connect(ports: list[int], *, authorities: str = "[127.0.0.1]", extra: str = "") -> str:
    return f"""
resilience:
  protocol:
    allow_connect: true
    connect_allowed_ports: {ports}
    connect_allowed_authorities: {authorities}
{extra}"""


POLICY = """
resilience:
  protocol:
    allowed_methods: [GET, HEAD, POST]
    denied_path_prefixes: ["/internal"]
"""


async def test_methods_and_denied_paths(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=POLICY)) as server:
        port = server.listeners[0].port
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            assert (await c.request("POST", "/echo", body=b"x")).status == 200
            r = await c.request("DELETE", "/echo")
            assert r.status == 405 and b"method DELETE is not allowed" in r.body and b"GET, HEAD, POST" in r.body
            r = await c.request("GET", "/internal/secrets?x=1")
            assert r.status == 403 and b"path_denied" in r.body
            assert (await c.request("GET", "/echo/internal")).status == 404  # reached the backend: a prefix, not a substring
            async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", b"localhost:443")]) as resp:
                assert resp.status == 405  # CONNECT is not in allowed_methods
            r = await c.request("CONNECT", "/", headers=[], authority="localhost:443")
            assert r.status == 400 and b"bad_connect" in r.body  # RFC 9114 4.4: no :scheme/:path with CONNECT
        assert len(backend.requests) == 2  # only the POST and /echo/internal reached the backend
        text = server.metrics.render().decode()
        assert "spooky_policy_denied_total 3.0" in text


async def test_connect_disabled_by_default(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
            async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:22")]) as resp:
                assert resp.status == 405


async def _lines(channel: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    async for data in channel:
        yield data


async def test_connect_over_http3_relays_bytes_both_ways(certs_dir: Path) -> None:
    async with run_raw_backend(_echo) as target, run_backend(name="app") as backend:
        config = proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=_connect([target.port]))
        async with running_proxy(config) as server:
            port = server.listeners[0].port
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                send, receive = trio.open_memory_channel[bytes](4)
                head = [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{target.port}".encode())]
                with trio.fail_after(10):
                    async with c.stream_raw(head, body=_lines(receive)) as resp:
                        assert resp.status == 200
                        for word in (b"hello", b"tunnel"):
                            await send.send(word)
                            assert await resp.receive() == word.upper()
                        await send.aclose()  # FIN: the target ends too, the relay closes
                        assert await resp.receive() == b""
                # a port not on the allowlist, and a target without a port
                async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{port}".encode())]) as resp:
                    assert resp.status == 403
                    assert b"connect_target_denied" in await resp.receive()
                async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", b"127.0.0.1")]) as resp:
                    assert resp.status == 400
            assert target.connections == 1
            assert backend.requests == []


async def test_connect_authority_allowlist_and_unreachable_target(certs_dir: Path) -> None:
    async with run_raw_backend(_echo) as target, run_backend(name="app") as backend:
        extra = _connect([], authorities='["localhost"]')
        async with running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
            async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{target.port}".encode())]) as resp:
                    assert resp.status == 403  # 127.0.0.1 is not the listed name
                send, receive = trio.open_memory_channel[bytes](1)
                async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", f"localhost:{target.port}".encode())], body=_lines(receive)) as resp:
                    assert resp.status == 200
                    await send.send(b"ok")
                    assert await resp.receive() == b"OK"
                    await send.aclose()
                # a listed name on a port where nothing listens: 502 from the connect failure
                async with run_raw_backend(_echo) as gone:
                    closed_port = gone.port
                async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", f"localhost:{closed_port}".encode())]) as resp:
                    assert resp.status == 502


class H2ConnectClient:
    """A minimal HTTP/2 client for one CONNECT stream (h2 over a trio TLS stream)."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.status: int | None = None
        self.data = bytearray()
        self.ended = False

    async def connect(self, authority: bytes) -> int:
        self.h2.initiate_connection()
        self.h2.send_headers(1, [(b":method", b"CONNECT"), (b":authority", authority)])
        await self.stream.send_all(self.h2.data_to_send())
        while self.status is None and not self.ended:
            await self._pump()
        assert self.status is not None
        return self.status

    async def send(self, data: bytes, *, end: bool = False) -> None:
        self.h2.send_data(1, data, end_stream=end)
        await self.stream.send_all(self.h2.data_to_send())

    async def receive_until(self, n: int) -> bytes:
        while len(self.data) < n and not self.ended:
            await self._pump()
        out, self.data = bytes(self.data[:n]), self.data[n:]
        return out

    async def _pump(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.ended = True
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.data += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended = True
        await self.stream.send_all(self.h2.data_to_send())


async def test_connect_over_http2(certs_dir: Path) -> None:
    async with run_raw_backend(_echo) as target, run_backend(name="app") as backend:
        config = proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=_connect([target.port]))
        async with running_proxy(config) as server:
            port = server.bootstrap_listeners[0].port
            stream = await tls_connect(port, client_context(certs_dir, alpn=["h2"]))
            with trio.fail_after(10):
                client = H2ConnectClient(stream)
                assert await client.connect(f"127.0.0.1:{target.port}".encode()) == 200
                await client.send(b"over h2")
                assert await client.receive_until(7) == b"OVER H2"
                await client.send(b"!", end=True)
                assert await client.receive_until(1) == b"!"
                while not client.ended:
                    await client._pump()
            await trio.aclose_forcefully(stream)
            # HTTP/1.1 CONNECT is not served (its tunnels are 101 upgrades)
            stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
            await stream.send_all(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n".encode())
            with trio.fail_after(10):
                head = await stream.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 501")
            await trio.aclose_forcefully(stream)
            assert target.connections == 1


ZERO_RTT = """
resilience:
  protocol:
    allow_0rtt: true
    early_data_safe_methods: [GET]
"""


async def test_zero_rtt_safe_methods_accepted_others_425(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=ZERO_RTT)) as server:
        port = server.listeners[0].port
        ca = str(certs_dir / "ca.pem")
        tickets: list[SessionTicket] = []
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, session_ticket_handler=tickets.append) as c:
            assert (await c.request("GET", "/echo")).status == 200
        assert tickets, "the server issues resumption tickets when allow_0rtt is on"

        # GET in 0-RTT: served
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, session_ticket=tickets.pop(),
                                    session_ticket_handler=tickets.append, early_data=True) as c:
            r = await c.request("GET", "/echo")
            await c.wait_handshake()
            assert c.session_resumed and c.early_data_accepted
            assert r.status == 200
        # POST in 0-RTT: 425 Too Early, then served once the handshake completed
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, session_ticket=tickets.pop(),
                                    session_ticket_handler=tickets.append, early_data=True) as c:
            r = await c.request("POST", "/echo", body=b"payload")
            assert c.early_data_accepted
            assert r.status == 425 and b"too_early" in r.body
            assert (await c.request("POST", "/echo", body=b"payload")).status == 200
        text = server.metrics.render().decode()
        assert "spooky_early_data_accepted_total 1.0" in text
        assert "spooky_early_data_rejected_total 1.0" in text
        assert len(backend.requests) == 3  # the 425 never reached the backend


async def test_no_resumption_without_allow_0rtt(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        tickets: list[SessionTicket] = []
        async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"),
                                    session_ticket_handler=tickets.append) as c:
            assert (await c.request("GET", "/echo")).status == 200
        assert tickets == []


async def test_connect_idle_tunnel_is_closed(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel, "TUNNEL_IDLE_TIMEOUT", 0.3)
    async with run_raw_backend(_echo) as target, run_backend(name="app") as backend:
        config = proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=_connect([target.port]))
        async with running_proxy(config) as server:
            async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                send, receive = trio.open_memory_channel[bytes](1)
                with trio.fail_after(10):
                    async with c.stream_raw([(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{target.port}".encode())], body=_lines(receive)) as resp:
                        assert resp.status == 200
                        # nothing moves: the proxy ends the tunnel (FIN or reset), we never sent a byte
                        try:
                            assert await resp.receive() == b""
                        except H3StreamReset:
                            pass
            with trio.fail_after(5):
                await server.activity.wait_idle()  # the tunnel's request task ended


async def test_a_ticket_resumes_once(certs_dir: Path) -> None:
    """Tickets are single-use: replaying one gives a full handshake and no early data,
    and the request sent in the refused 0-RTT is still answered (from 1-RTT)."""
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=ZERO_RTT)) as server:
        port = server.listeners[0].port
        ca = str(certs_dir / "ca.pem")
        tickets: list[SessionTicket] = []
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, session_ticket_handler=tickets.append) as c:
            assert (await c.request("GET", "/echo")).status == 200
        ticket = tickets.pop()
        outcomes = []
        for _ in range(2):
            with trio.fail_after(10):
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, session_ticket=ticket, early_data=True) as c:
                    r = await c.request("GET", "/echo")
                    await c.wait_handshake()
                    outcomes.append((r.status, c.session_resumed, c.early_data_accepted))
        assert outcomes == [(200, True, True), (200, False, False)]
        assert "spooky_early_data_accepted_total 1.0" in server.metrics.render().decode()


async def test_connect_tunnels_count_against_the_inflight_limit(certs_dir: Path) -> None:
    """An open CONNECT tunnel holds a global inflight slot like any request (found in review:
    tunnels bypassed admission), and gives it back when it ends."""
    async with run_raw_backend(_echo) as target, run_backend(name="app") as backend:
        limits = f"""
performance:
  global_inflight_limit: 1
resilience:
  adaptive_admission: {{enabled: false, min_limit: 1}}
  brownout: {{enabled: false}}
  protocol:
    allow_connect: true
    connect_allowed_ports: [{target.port}]
    connect_allowed_authorities: [127.0.0.1]
"""
        config = proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=limits)
        async with running_proxy(config) as server:
            port = server.listeners[0].port
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                send, receive = trio.open_memory_channel[bytes](4)
                head = [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{target.port}".encode())]
                with trio.fail_after(10):
                    async with c.stream_raw(head, body=_lines(receive)) as resp:
                        assert resp.status == 200
                        await send.send(b"ping")
                        assert await resp.receive() == b"PING"
                        shed = await c.request("GET", "/echo", authority="localhost")
                        assert shed.status == 503 and b"global_inflight" in shed.body
                        await send.aclose()
                        assert await resp.receive() == b""
                    await trio.testing.wait_all_tasks_blocked()
                    assert (await c.request("GET", "/echo", authority="localhost")).status == 200
