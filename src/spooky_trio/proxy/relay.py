"""One exchange's two halves as the forward step sees them: the request as the backend gets
it, and the backend's response relayed to the client within our limits."""

from __future__ import annotations

import trio

from spooky_trio.config import PerformanceConfig
from spooky_trio.core.generation import BackendRuntime
from spooky_trio.http.errors import ProxyError, ResponseTooLarge
from spooky_trio.http.headers import (
    build_upstream_headers,
    strip_response_hop_by_hop,
    upstream_authority,
)
from spooky_trio.http.messages import ResponseSink, UpstreamRequest
from spooky_trio.http.validate import TRANSPORT_SCHEME
from spooky_trio.proxy.bodies import limited_body, replay_body
from spooky_trio.proxy.context import RequestContext
from spooky_trio.upstream import UpstreamResponse
from spooky_trio.upstream.errors import UpstreamError

_NO_BODY_STATUSES = frozenset({204, 304})


def upstream_request(ctx: RequestContext, backend: BackendRuntime, chunks: list[bytes] | None) -> UpstreamRequest:
    """``ctx.request`` as ``backend`` gets it: hop-by-hop headers removed, X-Forwarded-* and
    the authority per the serving pool's policies, the body limited (or replayed from
    ``chunks`` for a retry or hedge)."""
    request = ctx.request
    pool = ctx.serving_pool
    config = ctx.config
    assert pool is not None and config is not None
    policy = pool.config
    perf = config.performance
    authority = ctx.authority.encode("latin-1")
    headers = build_upstream_headers(
        request.headers,
        forwarded_mode=policy.forwarded_headers.mode,
        client_ip=request.client_address[0],
        scheme=TRANSPORT_SCHEME,  # the scheme we terminated, never the client's :scheme
        client_authority=authority,
    )
    headers = [(n, v) for n, v in headers if n != b"content-length"]
    body = None
    if chunks is not None:
        body = replay_body(chunks)
    elif request.body is not None:
        body = limited_body(
            request.body,
            limit=perf.max_request_body_bytes,
            declared=request.content_length,
            idle_timeout=perf.client_body_idle_timeout_ms / 1000,
        )
    return UpstreamRequest(
        method=request.method,
        target=ctx.forward_target or request.path,
        authority=upstream_authority(
            policy.host_policy.mode,
            client_authority=authority,
            rewrite_host=policy.host_policy.host,
            backend_authority=backend.authority,
        ),
        headers=headers,
        body=body,
        content_length=request.content_length if body is not None else None,
        scheme=backend.target.scheme.encode("ascii"),
    )


async def relay_response(perf: PerformanceConfig, method: bytes, response: UpstreamResponse, sink: ResponseSink) -> None:
    """Relay ``response`` to ``sink``, flow-controlled, within ``max_response_body_bytes``
    and the body timeouts. Raises :class:`ProxyError` 503 for a declared length over the
    limit (nothing sent yet), :class:`ResponseTooLarge` when a streamed body passes it, and
    :class:`UpstreamError` (``body_timeout``) when the backend stalls."""
    limit = perf.max_response_body_bytes
    headers = strip_response_hop_by_hop(response.headers)
    declared = next((v for n, v in headers if n == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProxyError(503, "response_body_too_large", f"the backend's response exceeds {limit} bytes")
    if method == b"HEAD" or response.status in _NO_BODY_STATUSES:
        await sink.send_headers(response.status, headers, end_stream=True)
        return
    await sink.send_headers(response.status, headers)
    total = 0
    timeout = perf.backend_body_total_timeout_ms / 1000
    idle = perf.backend_body_idle_timeout_ms / 1000
    length = int(declared) if declared is not None and declared.isdigit() else None
    # the chunk that completes a declared length is held back so it can carry the end of
    # the stream: one DATA frame with FIN instead of a second, empty one
    last = b""
    while True:
        # data the engine already holds needs no timer (a tiny response's whole body)
        chunk = response.receive_nowait()
        if chunk is None:
            with trio.move_on_after(timeout) as scope:
                chunk = await response.receive()
            if scope.cancelled_caught:
                raise UpstreamError("backend response body stalled", reason="body_timeout")
        timeout = idle
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(f"backend response body exceeds {limit} bytes")
        if total == length:
            last = chunk
            continue
        await sink.send_data(chunk)
    if response.trailers:
        if last:
            await sink.send_data(last)
        await sink.send_trailers(response.trailers)
    else:
        await sink.send_data(last, end_stream=True)
