"""The access log: one line per request on logger ``spooky.access``.

:class:`AccessRecord` collects what the pipeline learns about a request (route, backend,
status, bytes each way); :class:`CountingSink` and :class:`CountingBody` count the bytes
without the ingress knowing. ``Proxy.handle`` writes the line once, in a ``finally``, so
HTTP/3 and bootstrap (HTTP/1.1, HTTP/2) requests, error answers and resets alike get one.

The line is formatted by the ``log.format`` handler: the message is a readable
``key=value`` line (``plain``), and the fields ride on the record as ``record.access`` so
:class:`~spooky_trio.observability.logging.JsonFormatter` writes them as JSON keys.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from spooky_trio.http.messages import DownstreamBody, DownstreamRequest, Headers, ResponseSink

access_log = logging.getLogger("spooky.access")

#: field order of the plain line and the JSON object
FIELDS = (
    "time", "client", "protocol", "method", "authority", "path", "status", "pool",
    "backend", "bytes_in", "bytes_out", "duration_ms", "outcome",
)


class AccessRecord:
    """What one request did; filled by the pipeline and the counting wrappers."""

    __slots__ = ("request", "started", "started_wall", "status", "pool", "backend", "bytes_in", "bytes_out", "outcome",
                 "extra_headers")

    def __init__(self, request: DownstreamRequest) -> None:
        self.request = request
        self.started = trio.current_time()
        self.started_wall = time.time()
        self.status: int | None = None
        self.pool: str | None = None
        self.backend: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        #: ``ok`` (answered by a backend), ``error`` (the proxy answered an error itself),
        #: ``reset`` (stream reset or client gone), ``tunnel`` (WebSocket relayed)
        self.outcome = "reset"
        #: added to the response head (the route-decision header)
        self.extra_headers: Headers = []

    def fields(self) -> dict[str, Any]:
        """The access-log fields, in :data:`FIELDS` order."""
        req = self.request
        client = req.client_address
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_wall)) + f".{int(self.started_wall % 1 * 1000):03d}Z",
            "client": f"[{client[0]}]:{client[1]}" if ":" in client[0] else f"{client[0]}:{client[1]}",
            "protocol": req.protocol,
            "method": req.method.decode("latin-1"),
            "authority": (req.authority or req.host_header or b"").decode("latin-1"),
            "path": req.path.decode("latin-1"),
            "status": self.status,
            "pool": self.pool,
            "backend": self.backend,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((trio.current_time() - self.started) * 1000, 3),
            "outcome": self.outcome,
        }

    def emit(self) -> None:
        """Write the line (cheap no-op when ``spooky.access`` is disabled at info)."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = self.fields()
        access_log.info(plain_line(fields), extra={"access": fields})


def plain_line(fields: dict[str, Any]) -> str:
    """``key=value`` pairs; values with spaces, quotes or ``=`` are double-quoted; None is ``-``."""
    parts = []
    for key in FIELDS:
        value = fields.get(key)
        text = "-" if value is None or value == "" else str(value)
        if any(c in text for c in ' "=\\') or any(ord(c) < 0x20 for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode("ascii") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class CountingBody:
    """A request body that adds the bytes it hands out to ``record.bytes_in``."""

    def __init__(self, inner: DownstreamBody, record: AccessRecord) -> None:
        self._inner = inner
        self._record = record

    async def receive(self) -> bytes:
        chunk = await self._inner.receive()
        self._record.bytes_in += len(chunk)
        return chunk


class CountingSink:
    """A response sink that records the status and the body bytes sent; other attributes
    (``open_tunnel``...) pass through to the ingress's sink."""

    def __init__(self, inner: ResponseSink, record: AccessRecord) -> None:
        self._inner = inner
        self._record = record

    @property
    def headers_sent(self) -> bool:
        return self._inner.headers_sent

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        if self._record.extra_headers:
            headers = [*headers, *self._record.extra_headers]
        await self._inner.send_headers(status, headers, end_stream=end_stream)
        self._record.status = status

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        await self._inner.send_data(data, end_stream=end_stream)
        self._record.bytes_out += len(data)

    async def send_trailers(self, trailers: Headers) -> None:
        await self._inner.send_trailers(trailers)

    def reset(self, reason: str) -> None:
        self._inner.reset(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
