"""WebSocket through the proxy: HTTP/1.1 Upgrade and HTTP/2 extended CONNECT (RFC 8441) on the
bootstrap listener, relayed to a hypercorn WebSocket echo backend; wsproto is the client."""

from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, RejectConnection, Request, TextMessage

from spooky_trio.clients.h3 import H3Client
from spooky_trio.proxy import tunnel
from tests.support.bootstrap import client_context, run_ws_backend, tls_connect
from tests.support.proxy import proxy_yaml, running_proxy

MiB = 1024 * 1024
H3_MESSAGE_ERROR = 0x10E
POOL = """
ws:
  route:
    path_prefix: "/"
  backends:
    - id: "ws-1"
      address: "{url}"
"""


class H1WsClient:
    """wsproto over a raw TLS stream (HTTP/1.1 Upgrade handshake)."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def handshake(self, path: str) -> object:
        await self.stream.send_all(self.ws.send(Request(host="localhost", target=path)))
        return await self.next_event()

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.ws.send(event))  # type: ignore[arg-type]

    async def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)


class H2WsClient:
    """wsproto frames carried in the DATA frames of one extended CONNECT stream."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.ws = Connection(ConnectionType.CLIENT)
        self.stream_id = 1
        self.remote_settings: dict[int, int] = {}
        self.status: int | None = None
        self.ended = False

    async def handshake(self, path: str) -> int:
        self.h2.initiate_connection()
        await self.stream.send_all(self.h2.data_to_send())
        while h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL not in self.remote_settings:
            await self._pump()
        self.h2.send_headers(self.stream_id, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":path", path.encode()), (b":authority", b"localhost"), (b"sec-websocket-version", b"13"),
        ])
        await self.stream.send_all(self.h2.data_to_send())
        while self.status is None:
            await self._pump()
        return self.status

    async def _pump(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.remote_settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, h2.events.ResponseReceived):
                self.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if self.ws.state is not ConnectionState.CLOSED:
                    self.ws.receive_data(event.data)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended = True
        await self.stream.send_all(self.h2.data_to_send())

    async def send(self, event: object) -> None:
        data = self.ws.send(event)  # type: ignore[arg-type]
        while data:
            window = min(self.h2.local_flow_control_window(self.stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                await self._pump()
                continue
            self.h2.send_data(self.stream_id, data[:window])
            data = data[window:]
            await self.stream.send_all(self.h2.data_to_send())

    async def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            await self._pump()


async def closed_by_peer(stream: trio.SSLStream[trio.SocketStream]) -> bool:
    """True when the proxy closed the connection (a relay may end without close_notify)."""
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


async def collect_message(client: H1WsClient | H2WsClient) -> bytes | str:
    parts: list[bytes | str] = []
    while True:
        event = await client.next_event()
        assert isinstance(event, (BytesMessage, TextMessage)), event
        parts.append(event.data)
        if event.message_finished:
            return b"".join(parts) if isinstance(parts[0], bytes) else "".join(parts)  # type: ignore[arg-type]


async def echo_round_trips(client: H1WsClient | H2WsClient) -> None:
    await client.send(TextMessage(data="hello"))
    assert await collect_message(client) == "hello"
    big = bytes(range(256)) * (MiB // 256)
    await client.send(BytesMessage(data=big))
    assert await collect_message(client) == big


async def test_http1_upgrade_echo_and_client_close(certs_dir: Path) -> None:
    async with run_ws_backend() as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        with trio.fail_after(10):
            client = H1WsClient(stream)
            accepted = await client.handshake("/chat?room=1")
            assert isinstance(accepted, AcceptConnection)
            assert (b"alt-svc", f'h3=":{port}"; ma=86400'.encode()) in accepted.extra_headers
            await echo_round_trips(client)
            await client.send(CloseConnection(code=1000, reason="bye"))
            closed = await client.next_event()
            assert isinstance(closed, CloseConnection) and closed.code == 1000
            assert await closed_by_peer(stream)
        await trio.aclose_forcefully(stream)
        handshake = backend.handshakes[0]
        assert handshake["path"] == "/chat"
        assert dict(handshake["headers"])[b"x-forwarded-proto"] == b"https"


async def test_http1_backend_closes_first_and_refusals_are_relayed(certs_dir: Path) -> None:
    async with run_ws_backend() as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        with trio.fail_after(10):
            client = H1WsClient(stream)
            assert isinstance(await client.handshake("/ws"), AcceptConnection)
            await client.send(TextMessage(data="close-please"))
            closed = await client.next_event()
            assert isinstance(closed, CloseConnection) and closed.code == 4000
            await client.send(closed.response())
            assert await closed_by_peer(stream)
        await trio.aclose_forcefully(stream)
        stream = await tls_connect(port, client_context(certs_dir, alpn=["http/1.1"]))
        with trio.fail_after(10):
            client = H1WsClient(stream)
            refused = await client.handshake("/ws/refuse")
            assert isinstance(refused, RejectConnection) and refused.status_code == 403
        await trio.aclose_forcefully(stream)


async def test_http2_extended_connect_echo_and_close(certs_dir: Path) -> None:
    async with run_ws_backend() as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.bootstrap_listeners[0].port
        stream = await tls_connect(port, client_context(certs_dir, alpn=["h2"]))
        with trio.fail_after(10):
            client = H2WsClient(stream)
            assert await client.handshake("/ws") == 200
            assert client.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
            await echo_round_trips(client)
            await client.send(CloseConnection(code=1000))
            closed = await client.next_event()
            assert isinstance(closed, CloseConnection) and closed.code == 1000
            while not client.ended:  # the backend closed: the proxy ends the stream
                await client._pump()
        await trio.aclose_forcefully(stream)
        assert backend.handshakes[0]["http_version"] == "1.1"
        assert b"sec-websocket-key" in dict(backend.handshakes[0]["headers"])


async def test_relay_idle_timeout_closes_both_sides(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel, "TUNNEL_IDLE_TIMEOUT", 0.3)
    async with run_ws_backend() as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        stream = await tls_connect(server.bootstrap_listeners[0].port, client_context(certs_dir, alpn=["http/1.1"]))
        with trio.fail_after(5):
            client = H1WsClient(stream)
            assert isinstance(await client.handshake("/ws"), AcceptConnection)
            assert await closed_by_peer(stream)  # idle: the proxy closed the relay
        await trio.aclose_forcefully(stream)
        assert server.activity.count == 0


async def test_websocket_on_http3_is_refused(certs_dir: Path) -> None:
    """Native HTTP/3 does not relay WebSocket: an Upgrade header is a malformed HTTP/3
    request (stream reset, RFC 9114 4.2) and extended CONNECT gets 501 naming RFC 9220."""
    async with run_ws_backend() as backend, running_proxy(proxy_yaml(POOL.format(url=backend.url), certs_dir=certs_dir)) as server:
        port = server.listeners[0].port
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as h3:
            r = await h3.request("GET", "/ws", headers=[("upgrade", "websocket")], authority="localhost")
            assert r.status is None and r.reset_code == H3_MESSAGE_ERROR
            r = await h3.request("CONNECT", "/ws", headers=[(":protocol", "websocket")], authority="localhost")
            assert r.status == 501 and b"extended_connect_unsupported" in r.body
        assert backend.handshakes == [] and backend.http_requests == 0


async def test_tunnel_needs_a_tunnel_capable_sink() -> None:
    """The 501 an ingress without tunnels (HTTP/3) gets if an upgrade reaches the pipeline."""
    from spooky_trio.http.messages import DownstreamRequest
    from spooky_trio.http.errors import ProxyError

    class PlainSink:
        headers_sent = False

    request = DownstreamRequest(
        method=b"GET", scheme=b"https", authority=b"localhost", path=b"/ws",
        headers=[(b"upgrade", b"websocket")], protocol="HTTP/3", client_address=("127.0.0.1", 1),
    )
    assert tunnel.wants_tunnel(request)
    with pytest.raises(ProxyError) as info:
        await tunnel.relay_tunnel(None, None, None, request, b"localhost", PlainSink())  # type: ignore[arg-type]
    assert info.value.response.status == 501 and info.value.response.reason == "upgrade_not_supported"
