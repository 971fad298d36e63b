"""Bodies stream with backpressure: a client that stops reading stops the backend, and a
backend that stops reading stops the client, with bounded buffering in the proxy."""

from __future__ import annotations

from pathlib import Path

import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import pattern_bytes, run_backend
from tests.support.proxy import proxy_yaml, running_proxy

MiB = 1024 * 1024


async def _wait_until_stalled(read_value, *, settle_polls: int = 6, interval: float = 0.05, limit: float = 15.0) -> int:  # type: ignore[no-untyped-def]
    """Poll ``read_value()`` until it stops changing for ``settle_polls`` polls in a row.

    Not a sleep papering over a race: it measures quiescence, and the assertion is on the
    value it settled at (bounded buffering), which no amount of waiting changes.
    """
    last, still = -1, 0
    with trio.fail_after(limit):
        while still < settle_polls:
            await trio.sleep(interval)
            value = read_value()
            still = still + 1 if value == last else 0
            last = value
    return last


async def test_slow_client_holds_back_a_large_download(certs_dir: Path) -> None:
    total = 40 * MiB
    pools = """
    app:
      route:
        path_prefix: "/"
      backends:
        - id: "big"
          address: "{url}"
    """
    async with run_backend(name="big") as backend:
        yaml = proxy_yaml(pools.replace("{url}", backend.url), certs_dir=certs_dir, extra="performance:\n  backend_body_idle_timeout_ms: 30000\n  backend_timeout_ms: 30000\n")
        async with running_proxy(yaml) as server:
            port = server.listeners[0].port
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                async with c.stream_request("GET", f"/bytes/{total}", authority="localhost") as resp:
                    assert resp.status == 200
                    first = await resp.receive()
                    await backend.wait_for_requests(1)
                    record = backend.requests[0]
                    stalled_at = await _wait_until_stalled(lambda: record.get("sent", 0))
                    # windows and socket buffers along the path, not the body, bound this
                    assert stalled_at < 8 * MiB, stalled_at
                    received = len(first)
                    expected = pattern_bytes(64 * 1024)
                    assert first == expected[: len(first)]
                    while chunk := await resp.receive():
                        received += len(chunk)
                    assert received == total
                    assert record["sent"] == total


async def test_slow_backend_holds_back_a_large_upload(certs_dir: Path) -> None:
    """The backend reads nothing for a while: the client cannot push the whole body in."""
    total = 24 * MiB
    pools = """
    app:
      route:
        path_prefix: "/"
      backends:
        - id: "sink"
          address: "{url}"
    """
    extra = """
performance:
  max_request_body_bytes: 100000000
  request_buffer_global_cap_bytes: 100000000
  backend_timeout_ms: 30000
  backend_body_idle_timeout_ms: 30000
  client_body_idle_timeout_ms: 30000
"""
    async with run_backend(name="sink") as backend:
        async with running_proxy(proxy_yaml(pools.replace("{url}", backend.url), certs_dir=certs_dir, extra=extra)) as server:
            port = server.listeners[0].port
            produced = 0
            release = trio.Event()

            async def body():  # type: ignore[no-untyped-def]
                nonlocal produced
                piece = b"u" * (256 * 1024)
                while produced < total:
                    yield piece
                    produced += len(piece)

            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                async with trio.open_nursery() as nursery:
                    result = {}

                    async def upload() -> None:
                        r = await c.request("POST", "/hold?until=release", body=body(), authority="localhost")
                        result["status"] = r.status
                        result["body"] = r.body

                    nursery.start_soon(upload)
                    await backend.wait_for_requests(1)
                    stalled_at = await _wait_until_stalled(lambda: produced)
                    assert stalled_at < 8 * MiB, stalled_at
                    backend.release_holds()
                    release.set()
            assert result["status"] == 200
            assert result["body"] == str(total).encode()


async def test_slow_http2_client_on_the_tcp_listener_holds_back_a_large_download(certs_dir: Path) -> None:
    """HTTP/2 over the bootstrap listener with flow-control windows too large to matter: only
    the proxy's own send buffering (a bounded queue ahead of one socket write) and the socket
    buffers may stand between a client that stops reading and the backend."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    from tests.support.bootstrap import client_context, tls_connect

    total = 40 * MiB
    async with run_backend(name="big") as backend:
        pools = f'app:\n  route:\n    path_prefix: "/"\n  backends:\n    - id: "big"\n      address: "{backend.url}"\n'
        extra = "performance:\n  backend_body_idle_timeout_ms: 30000\n  backend_timeout_ms: 30000\n"
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir, extra=extra)) as server:
            stream = await tls_connect(server.bootstrap_listeners[0].port, client_context(certs_dir, alpn=["h2"]))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            conn.initiate_connection()
            conn.increment_flow_control_window(2**31 - 1 - 65535)
            conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", f"/bytes/{total}".encode()), (b":authority", b"localhost")], end_stream=True)
            await stream.send_all(conn.data_to_send())
            received, status, ended = 0, None, False
            with trio.fail_after(10):
                while status is None:
                    for event in conn.receive_data(await stream.receive_some(65536)):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers)[b":status"]
                        elif isinstance(event, h2.events.DataReceived):
                            received += len(event.data)
            assert status == b"200"
            await backend.wait_for_requests(1)
            record = backend.requests[0]
            stalled_at = await _wait_until_stalled(lambda: record.get("sent", 0))
            # socket buffers and the proxy's bounded send queue, not the windows, bound this
            assert stalled_at < 8 * MiB, stalled_at
            with trio.fail_after(30):
                while not ended:
                    data = await stream.receive_some(1 << 20)
                    assert data
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):
                            received += len(event.data)
                        elif isinstance(event, h2.events.StreamEnded):
                            ended = True
            assert received == total and record["sent"] == total
            await trio.aclose_forcefully(stream)
