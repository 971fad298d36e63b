"""The access log: one line per request on logger ``spooky.access``.

:class:`AccessRecord` holds what the log line shows of a request (route, backend, status,
bytes each way, the outcome and the ``reason`` that decided the answer); the proxy's
per-request context extends it (``proxy/context.py``), and :class:`CountingBody` counts the
request body bytes without the ingress knowing. The proxy's record step
(``proxy/answers.py``) writes the line exactly once per request, whoever answered: a
backend, a filter, the ingress (431, 400, 408...), or nobody (a reset).

The line is formatted by the ``log.format`` handler: the message is a readable
``key=value`` line (``plain``), and the fields ride on the record as ``record.access`` so
:class:`~spooky_trio.observability.logging.JsonFormatter` writes them as JSON keys.
"""

from __future__ import annotations

import logging
import time

import trio

from spooky_trio.http.messages import DownstreamBody, DownstreamRequest

access_log = logging.getLogger("spooky.access")

#: field order of the plain line and the JSON object
FIELDS = (
    "time", "client", "protocol", "method", "authority", "path", "status", "pool",
    "backend", "upstream_protocol", "bytes_in", "bytes_out", "duration_ms", "outcome", "reason", "split", "fault",
)


class AccessRecord:
    """What one request did, as the access log shows it; filled by the proxy's filters,
    its answer door and the byte-counting wrappers."""

    __slots__ = ("request", "started", "started_wall", "status", "pool", "backend", "bytes_in", "bytes_out", "outcome",
                 "reason", "client_target", "upstream_protocol", "split", "fault")

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
        #: ``reset`` (stream reset or client gone), ``tunnel`` (WebSocket or CONNECT relayed)
        self.outcome = "reset"
        #: the step that decided the answer: ``ok`` for a backend's answer, else the short
        #: machine-readable reason of the proxy's own answer or reset (``no_route``,
        #: ``headers_too_large``, ``connect_failed``, ``client_gone``...)
        self.reason: str | None = None
        #: the request target as the client sent it, when the proxy normalized the path
        #: (the log shows what the client asked for)
        self.client_target: bytes | None = None
        #: ``HTTP/1.1``, ``HTTP/2`` or ``HTTP/3``: how the backend whose answer the client
        #: got was spoken to (None when no backend answered)
        self.upstream_protocol: str | None = None
        #: a pool with a traffic_policy split: ``<route pool>-><serving pool>`` (the same
        #: name twice when the request stayed), else None
        self.split: str | None = None
        #: an injected fault (traffic_policy.fault): ``delay:<ms>ms``, ``abort:<status>`` or
        #: both joined by ``+``, else None
        self.fault: str | None = None

    def fields(self) -> dict[str, object]:
        """The access-log fields, in :data:`FIELDS` order; ``split`` and ``fault`` only on
        the lines of requests a traffic policy split or faulted."""
        req = self.request
        client = req.client_address
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_wall)) + f".{int(self.started_wall % 1 * 1000):03d}Z",
            "client": f"[{client[0]}]:{client[1]}" if ":" in client[0] else f"{client[0]}:{client[1]}",
            "protocol": req.protocol,
            "method": req.method.decode("latin-1"),
            "authority": (req.authority or req.host_header or b"").decode("latin-1"),
            "path": (self.client_target or req.path).decode("latin-1"),
            "status": self.status,
            "pool": self.pool,
            "backend": self.backend,
            "upstream_protocol": self.upstream_protocol,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((trio.current_time() - self.started) * 1000, 3),
            "outcome": self.outcome,
            "reason": self.reason,
            **({"split": self.split} if self.split is not None else {}),
            **({"fault": self.fault} if self.fault is not None else {}),
        }

    def emit(self) -> None:
        """Write the line (cheap no-op when ``spooky.access`` is disabled at info)."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = self.fields()
        access_log.info(plain_line(fields), extra={"access": fields})


def plain_line(fields: dict[str, object]) -> str:
    """``key=value`` pairs; values with spaces, quotes or ``=`` are double-quoted; None is ``-``;
    a field the line does not have (``split``, ``fault``) is left out."""
    parts = []
    for key in FIELDS:
        if key not in fields:
            continue
        value = fields[key]
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
