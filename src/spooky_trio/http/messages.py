"""Protocol-neutral message types shared by ingress, the proxy pipeline and upstream clients.

Header names are lowercase ``bytes``; values are ``bytes``. Pseudo-headers never appear in
``Headers`` lists; they are carried as explicit fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

import attrs

Headers = list[tuple[bytes, bytes]]

#: A request or response body as the sender produces it: an async iterable of non-empty
#: chunks. It ends when the iteration ends; an exception from it aborts the exchange.
Body = AsyncIterable[bytes]


@attrs.define(slots=True)
class UpstreamRequest:
    """What the proxy sends to a backend.

    ``headers`` are already cleaned of hop-by-hop headers and of ``host``; the upstream
    client sends ``authority`` as ``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2).
    ``content_length`` is the declared length, or None when unknown (HTTP/1.1 then uses
    chunked encoding when ``body`` is not None). ``body`` None means no body at all.
    """

    method: bytes
    target: bytes
    authority: bytes
    headers: Headers
    body: Body | None = None
    content_length: int | None = None
    scheme: bytes = b"https"
