"""CONNECT tunnels (RFC 9110 9.3.6 over HTTP/2 and HTTP/3 streams): a TCP connection to the
target the policy permitted (:func:`spooky_trio.resilience.policy.check_request`), relayed
byte for byte with :func:`spooky_trio.proxy.tunnel.relay_bytes` (idle timeout included).

The tunnel never goes through routing or a pool: the allowlists in
``resilience.protocol`` decide where it may go.
"""

from __future__ import annotations

import trio

from spooky_trio.config import PerformanceConfig
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.messages import DownstreamRequest, ResponseSink
from spooky_trio.proxy import tunnel
from spooky_trio.proxy.tunnel import TunnelSink, relay_bytes
from spooky_trio.resilience.policy import ConnectTarget
from spooky_trio.upstream.errors import UpstreamConnectError


async def relay_connect(perf: PerformanceConfig, target: ConnectTarget, request: DownstreamRequest, sink: ResponseSink) -> None:
    """Open TCP to ``target`` within ``backend_connect_timeout_ms``, answer 200 and relay
    until both directions ended, one side broke, or nothing moved for
    :data:`~spooky_trio.proxy.tunnel.TUNNEL_IDLE_TIMEOUT` (the WebSocket relays' idle limit).

    Raises :class:`ProxyError` 501 when the client's protocol cannot carry a tunnel
    (HTTP/1.1 CONNECT is not served) and :class:`UpstreamConnectError` (502) when the target
    cannot be reached.
    """
    # HTTP/1.1 sinks tunnel with a 101 (WebSocket); a CONNECT there is not served
    if request.protocol.startswith("HTTP/1") or not isinstance(sink, TunnelSink):
        raise ProxyError(501, "connect_not_supported", f"CONNECT is not supported over {request.protocol}; use HTTP/2 or HTTP/3")
    try:
        with trio.fail_after(perf.backend_connect_timeout_ms / 1000):
            upstream = await trio.open_tcp_stream(target.host, target.port)
    except (OSError, trio.TooSlowError) as exc:
        raise UpstreamConnectError(f"cannot connect to {target}: {exc or 'timed out'}") from exc
    async with upstream:
        client = await sink.open_tunnel([])
        await relay_bytes(client, upstream, b"", idle_timeout=tunnel.TUNNEL_IDLE_TIMEOUT)
