"""OTLP export of finished spans: the bounded queue and the Trio task that drains it.

Why not the SDK's ``BatchSpanProcessor``: it starts its own daemon thread per processor and
drops spans past its queue bound without telling anyone (a warning at most), and nothing
owns the thread (a reload or a stop cannot bound or cancel what it is doing). Here the
request path only appends to :class:`SpanQueue` (a ``deque`` bounded by
``OTEL_BSP_MAX_QUEUE_SIZE``; a span that finds it full is dropped and counted in
``spooky_tracing_spans_dropped_total{reason="queue_full"}``), and :class:`ExportTask`, a Trio
task in the server's root nursery, drains it: every ``OTEL_BSP_SCHEDULE_DELAY`` or as soon
as a batch (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``) is waiting, it hands one batch at a time to
the SDK's OTLP exporter in a worker thread (``trio.to_thread``, one thread at most: the
exporters are blocking clients) under a deadline (``OTEL_BSP_EXPORT_TIMEOUT``). A batch that
fails or passes its deadline is dropped and counted (``export_failed``), and the task backs
off (1 s doubling to 30 s) while the queue absorbs what it can. Nothing the request path does
waits for any of it.

Which collector (:func:`export_settings`): ``observability.tracing.otlp_endpoint``, else
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
``http://127.0.0.1:4317`` (Spooky's fallbacks); over OTLP/gRPC unless
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` say
``http/protobuf``. The exporters read the rest of the ``OTEL_EXPORTER_OTLP_*`` variables
(headers, compression, certificates) themselves.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
import trio
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from spooky_trio.config import TracingConfig

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.tracing")

#: Spooky's default collector (the OTLP/gRPC port) and the OTLP/HTTP one
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"
DEFAULT_HTTP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
PROTOCOLS = ("grpc", "http/protobuf")
#: back-off after a failed export: first wait, ceiling (seconds)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
#: a stopping server flushes what is queued for at most this long (after its drain)
FLUSH_TIMEOUT = 2.0
#: closing or creating an exporter (a channel, a session) takes at most this long
SETUP_TIMEOUT = 2.0


@attrs.frozen
class BatchSettings:
    """The OTel SDK's batch-processor variables (milliseconds and counts), as specified."""

    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay: float = 5.0
    export_timeout: float = 30.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> BatchSettings:
        """``OTEL_BSP_*``; a value that is not a positive integer keeps the default (logged)."""
        def read(name: str, default: int) -> int:
            text = environ.get(name, "").strip()
            if not text:
                return default
            if text.isdigit() and int(text) > 0:
                return int(text)
            log.warning("%s=%r is not a positive integer; using %d", name, text, default)
            return default

        queue = read("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        return cls(
            max_queue_size=queue,
            max_export_batch_size=min(read("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), queue),
            schedule_delay=read("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
            export_timeout=read("OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000,
        )


@attrs.frozen
class ExportSettings:
    """Where spans go: ``endpoint`` (as the exporter takes it) over ``protocol``."""

    endpoint: str
    protocol: str

    @property
    def shown(self) -> str:
        """The endpoint for logs: scheme, host, port and path (no credentials, no query)."""
        parts = urlsplit(self.endpoint)
        if not parts.hostname:
            return f"{self.protocol} endpoint"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path} ({self.protocol})"


def export_settings(config: TracingConfig, environ: Mapping[str, str]) -> ExportSettings:
    """The collector of ``config`` with the environment fallbacks (module docstring).

    With ``http/protobuf``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is the full URL,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` a base that gets ``/v1/traces`` (the OTel rules), and an
    ``otlp_endpoint`` without a path gets ``/v1/traces`` too.
    """
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    http = protocol == "http/protobuf"
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if config.otlp_endpoint:
        endpoint = config.otlp_endpoint
        if http and urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
    elif traces:
        endpoint = traces
    elif base:
        endpoint = base.rstrip("/") + "/v1/traces" if http else base
    else:
        endpoint = DEFAULT_HTTP_ENDPOINT if http else DEFAULT_GRPC_ENDPOINT
    return ExportSettings(endpoint, protocol)


def make_exporter(settings: ExportSettings, timeout: float) -> SpanExporter:
    """The SDK's OTLP exporter for ``settings`` (each call of its ``export`` takes at most
    ``timeout`` seconds, its own retries included). Raises ValueError for a protocol we do
    not export with (``http/json``)."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.endpoint, timeout=timeout)
    if settings.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=settings.endpoint, timeout=timeout)
    raise ValueError(f"OTLP protocol {settings.protocol!r} is not supported (use one of {', '.join(PROTOCOLS)})")


class SpanQueue(SpanProcessor):
    """The span processor of every tracer: finished sampled spans wait here for the export
    task. ``on_end`` never blocks: past ``max_size`` the span is dropped and counted."""

    def __init__(self, max_size: int, batch_size: int, metrics: Metrics | None) -> None:
        self.max_size = max_size
        self.batch_size = batch_size
        self._metrics = metrics
        self._spans: collections.deque[ReadableSpan] = collections.deque()
        #: set while the export task waits for a full batch (or for :meth:`wake`)
        self._wakeup: trio.Event | None = None

    def __len__(self) -> int:
        return len(self._spans)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        spans = self._spans
        if len(spans) >= self.max_size:
            if self._metrics is not None:
                self._metrics.tracing_dropped("queue_full", 1)
            return
        spans.append(span)
        if self._wakeup is not None and len(spans) >= self.batch_size:
            self._wakeup.set()

    def take(self, n: int) -> list[ReadableSpan]:
        """Up to ``n`` spans, oldest first."""
        spans = self._spans
        return [spans.popleft() for _ in range(min(n, len(spans)))]

    def clear(self) -> int:
        """Drop everything queued; returns how many."""
        n = len(self._spans)
        self._spans.clear()
        return n

    async def wait(self, timeout: float) -> None:
        """Return when a batch is waiting, :meth:`wake` was called, or after ``timeout``."""
        if len(self._spans) >= self.batch_size:
            return
        self._wakeup = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await self._wakeup.wait()
        finally:
            self._wakeup = None

    def wake(self) -> None:
        """End a :meth:`wait` now (the export settings changed)."""
        if self._wakeup is not None:
            self._wakeup.set()


class ExportTask:
    """Drains :class:`SpanQueue` into the wanted exporter (module docstring). :meth:`want`
    chooses the collector (None: no exporter; what is queued is dropped as ``no_exporter``);
    :meth:`run` is the task; :meth:`flush` exports what is queued, for a stopping server."""

    def __init__(self, queue: SpanQueue, batch: BatchSettings, metrics: Metrics | None,
                 make: Callable[[ExportSettings, float], SpanExporter] = make_exporter) -> None:
        self.queue = queue
        self.batch = batch
        self._metrics = metrics
        self._make = make
        self._wanted: ExportSettings | None = None
        self._current: ExportSettings | None = None
        self.exporter: SpanExporter | None = None
        #: seconds of the current back-off (0: the collector answered last time)
        self.backoff = 0.0
        #: one export thread at a time, also across an abandoned (timed-out) one
        self._limiter = trio.CapacityLimiter(1)
        self._lock = trio.Lock()
        #: set by :meth:`want` to end a back-off early
        self._kick: trio.Event | None = None

    def want(self, settings: ExportSettings | None) -> None:
        """Export to ``settings`` from the next batch on (a reload may change it)."""
        if settings != self._wanted:
            self._wanted = settings
            self.queue.wake()
            if self._kick is not None:
                self._kick.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until cancelled; the exporter is shut down on the way out.
        Started once the first exporter is set up (or failed to be)."""
        try:
            if self._wanted != self._current:
                await self._switch()
            task_status.started()
            while True:
                idle = self._wanted is None and self._current is None and not len(self.queue)
                await self.queue.wait(math.inf if idle else self.batch.schedule_delay)
                while True:
                    if self._wanted != self._current:  # (a reload changed the collector)
                        await self._switch()
                    if not len(self.queue):
                        break
                    if not await self._export_batch():
                        await self._back_off()
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Let the export in progress end, then export what is queued, for at most
        ``timeout`` seconds in all; nothing new is tried while backing off (the collector
        failed last time: a stopping server does not wait for it)."""
        with trio.move_on_after(timeout):
            async with self._lock:
                pass
            while len(self.queue) and not self.backoff:  # (no exporter: dropped and counted)
                if not await self._export_batch():
                    return

    async def _export_batch(self) -> bool:
        """Export one batch; False when it failed (and was dropped)."""
        async with self._lock:
            exporter = self.exporter
            if exporter is None:
                dropped = self.queue.clear()
                if dropped and self._metrics is not None:
                    self._metrics.tracing_dropped("no_exporter", dropped)
                return True
            batch = self.queue.take(self.batch.max_export_batch_size)
            if not batch:
                return True
            result = await self._call_export(exporter, batch)
        if self._metrics is not None:
            self._metrics.tracing_export(result, len(batch))
            if result != "success":
                self._metrics.tracing_dropped("export_failed", len(batch))
        if result == "success":
            if self.backoff:
                log.info("trace export to %s works again", self._shown)
            self.backoff = 0.0
            return True
        self.backoff = min(BACKOFF_MAX, self.backoff * 2) if self.backoff else BACKOFF_FIRST
        log.log(logging.WARNING if self.backoff == BACKOFF_FIRST else logging.DEBUG,
                "trace export to %s: %s, %d span(s) dropped; next try in %.0f s (up to %d spans queue meanwhile)",
                self._shown, "no answer in time" if result == "timeout" else "failed", len(batch), self.backoff,
                self.queue.max_size)
        return False

    async def _call_export(self, exporter: SpanExporter, batch: Sequence[ReadableSpan]) -> str:
        """``success``, ``failure`` or ``timeout`` (the thread is abandoned, not waited for:
        the exporter's own timeout ends it, and the limiter keeps it the only one)."""
        timeout = self.batch.export_timeout
        with trio.move_on_after(timeout + 1):
            try:
                result = await trio.to_thread.run_sync(exporter.export, batch, abandon_on_cancel=True, limiter=self._limiter)
            except Exception as exc:  # noqa: BLE001 - an exporter bug must not end the task
                log.debug("trace exporter raised", exc_info=exc)
                return "failure"
            return "success" if result == SpanExportResult.SUCCESS else "failure"
        return "timeout"

    async def _back_off(self) -> None:
        """Wait out the back-off, or until the settings change."""
        self._kick = trio.Event()
        try:
            with trio.move_on_after(self.backoff):
                await self._kick.wait()
        finally:
            self._kick = None

    async def _switch(self) -> None:
        """Close the current exporter and make the wanted one."""
        await self._close()
        wanted = self._current = self._wanted
        self.backoff = 0.0
        if wanted is None:
            return
        with trio.move_on_after(SETUP_TIMEOUT):
            try:
                self.exporter = await trio.to_thread.run_sync(self._make, wanted, self.batch.export_timeout,
                                                              abandon_on_cancel=True)
            except Exception as exc:  # noqa: BLE001 - a bad protocol or certificate file: logged, spans dropped
                log.error("tracing: cannot export to %s: %s; finished spans are dropped", wanted.shown, exc)
                return
            log.info("tracing: exporting spans to %s", wanted.shown)
            return
        log.error("tracing: setting up the exporter for %s took over %.0f s; finished spans are dropped", wanted.shown, SETUP_TIMEOUT)

    async def _close(self) -> None:
        exporter, self.exporter = self.exporter, None
        if exporter is not None:
            with trio.move_on_after(SETUP_TIMEOUT):
                await trio.to_thread.run_sync(exporter.shutdown, abandon_on_cancel=True)

    @property
    def _shown(self) -> str:
        return self._current.shown if self._current is not None else "-"
