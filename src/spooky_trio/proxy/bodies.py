"""Request bodies as the upstream engines read them: the client's body with our limits
enforced, and a buffered body replayed for a retry or hedge attempt."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from spooky_trio.http.messages import (
    DownstreamBody,
    RequestBodyError,
    RequestBodyTimeout,
    RequestBodyTooLarge,
)


async def limited_body(body: DownstreamBody, *, limit: int, declared: int | None, idle_timeout: float) -> AsyncIterator[bytes]:
    """Client body with the size limit, the declared length and the idle gap enforced."""
    total = 0
    while True:
        with trio.move_on_after(idle_timeout) as scope:
            chunk = await body.receive()
        if scope.cancelled_caught:
            raise RequestBodyTimeout(f"no request body bytes for {idle_timeout:g}s")
        if not chunk:
            if declared is not None and total != declared:
                raise RequestBodyError(f"request body ended at {total} of {declared} declared bytes")
            return
        total += len(chunk)
        if total > limit:
            raise RequestBodyTooLarge(f"request body exceeds {limit} bytes")
        if declared is not None and total > declared:
            raise RequestBodyError("request body longer than its content-length")
        yield chunk


async def replay_body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """A buffered request body, as many times as attempts need it."""
    for chunk in chunks:
        yield chunk
