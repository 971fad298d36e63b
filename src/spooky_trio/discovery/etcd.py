"""``discovery.kind: etcd``: the backends under a key prefix, kept current by a watch.

The loop (one task per source, :meth:`EtcdSource.run`):

1. read every key under ``prefix`` (one range read) and apply the set; the read's revision
   is where the watch starts;
2. watch the prefix from that revision + 1, applying each batch of events as it arrives
   (a put or delete is in the pool within milliseconds);
3. every ``refresh_ms`` the watch is renewed from the last revision seen (no re-read): a
   frozen etcd, which keeps the connection open and says nothing, is noticed within one
   period, and every call keeps a deadline;
4. a watch etcd cancels because the history it needs was compacted, or any failure (a
   refused connection, a timeout, a broken stream, a refused login), ends the session:
   the next endpoint of ``endpoints`` is tried after a backoff (doubling from 100 ms to
   ``refresh_ms``), starting again at step 1 (a full re-read).

A key's id is its suffix after the prefix; its value is JSON ``{"address": ..., "weight":
...}`` (``health_check`` too, like a config backend; ``id``, if given, must be the
suffix). A value that is not valid keeps the key's last valid value (or is ignored for a
new key), counted and logged each time; the rest of the answer applies. While etcd is
unreachable, or when the prefix holds no key, the pool keeps its last good set.
"""

from __future__ import annotations

import json
import logging

import trio

from spooky_trio.config.backend_entries import BackendEntry, EntryError, id_error, parse_entry
from spooky_trio.config.schema_discovery import DiscoveryConfig
from spooky_trio.config.validate_discovery import etcd_password, etcd_tls_context
from spooky_trio.discovery.etcd_gateway import EtcdGateway, KeyValue, WatchStream
from spooky_trio.discovery.source import DiscoveryError, SourceSink

log = logging.getLogger("spooky.discovery")

#: the first reconnect delay (seconds); it doubles up to refresh_ms
INITIAL_BACKOFF = 0.1
#: the largest value read as a backend
MAX_VALUE_BYTES = 64 * 1024


class _Compacted(Exception):
    """etcd cancelled the watch: the revision it was to start from is compacted."""


class EtcdSource:
    """Keeps one pool's set in step with an etcd prefix (module docstring)."""

    def __init__(self, discovery: DiscoveryConfig, sink: SourceSink) -> None:
        self.discovery = discovery
        self.sink = sink
        self.prefix = (discovery.prefix or "").encode("utf-8")
        self.endpoints = [endpoint.rstrip("/") for endpoint in discovery.endpoints]
        self.timeout = discovery.timeout_ms / 1000
        self.period = discovery.refresh_ms / 1000
        #: the prefix's keys as last read and watched (id -> its last valid value)
        self.entries: dict[str, BackendEntry] = {}
        #: the revision of the last change seen (the watch resumes after it)
        self.revision = 0
        #: full re-reads done (the first one included) and watches started
        self.reads = 0
        self.watches = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; started once the first read succeeded or every endpoint
        failed once (then the pool serves what it had)."""
        started = False
        failures = 0
        backoff = min(INITIAL_BACKOFF, self.period)
        index = 0
        read_needed = True
        gateway: EtcdGateway | None = None
        try:
            while True:
                endpoint = self.endpoints[index % len(self.endpoints)]
                try:
                    if gateway is None:
                        gateway = self._gateway()
                    if read_needed:
                        await self._read(gateway, endpoint)
                        read_needed = False
                    if not started:
                        started = True
                        task_status.started()
                    await self._watch(gateway, endpoint)
                    backoff = min(INITIAL_BACKOFF, self.period)  # a renewal: the session was fine
                    continue
                except _Compacted:
                    log.info("%s: the watch needs history etcd compacted; reading the prefix again", self.sink.label)
                    read_needed = True
                    continue
                except Exception as exc:  # noqa: BLE001 - DiscoveryError, or a surprise that must not end the source
                    if not isinstance(exc, DiscoveryError):
                        log.exception("%s: unexpected error while talking to %s", self.sink.label, endpoint)
                        exc = DiscoveryError("internal", f"{type(exc).__name__}: {exc}")
                    self.sink.failure(exc)
                    read_needed = True  # a broken watch may have missed events
                    index += 1
                    failures += 1
                    if exc.reason == "auth" and gateway is not None:  # the password or certificate may have been rotated
                        await gateway.aclose()
                        gateway = None
                if not started and failures >= len(self.endpoints):
                    started = True
                    task_status.started()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.period)
        finally:
            if gateway is not None:
                await gateway.aclose()

    def _gateway(self) -> EtcdGateway:
        """The client, with the TLS files and password read now (checked at load; a file
        broken since is a failure of this attempt)."""
        discovery = self.discovery
        try:
            password = etcd_password(discovery)
            https = any(endpoint.startswith("https://") for endpoint in self.endpoints)
            context = etcd_tls_context(discovery) if https else None
        except (OSError, ValueError) as exc:
            raise DiscoveryError("auth", f"cannot read the etcd TLS or password files: {exc}") from None
        return EtcdGateway(timeout=self.timeout, context=context, username=discovery.username, password=password)

    async def _read(self, gateway: EtcdGateway, endpoint: str) -> None:
        revision, kvs = await gateway.range(endpoint, self.prefix)
        previous, self.entries = self.entries, {}
        for kv in kvs:
            self._apply(kv, previous)
        self.revision = revision
        self.reads += 1
        self.sink.answer(list(self.entries.values()))

    async def _watch(self, gateway: EtcdGateway, endpoint: str) -> None:
        """One watch session: returns after ``refresh_ms`` (to be renewed), raises when it
        breaks (:class:`_Compacted` when etcd cancelled it for compaction)."""
        with trio.move_on_after(self.period):
            async with gateway.watch(endpoint, self.prefix, self.revision + 1) as stream:
                self.watches += 1
                await self._follow(stream)

    async def _follow(self, stream: WatchStream) -> None:
        message = stream.first
        while message is not None:
            if message.compact_revision:
                raise _Compacted()
            if message.canceled:  # not for compaction: a refused permission, a watch limit
                reason = "auth" if "permission" in message.cancel_reason or "auth" in message.cancel_reason else "unreachable"
                raise DiscoveryError(reason, f"etcd cancelled the watch: {message.cancel_reason or 'no reason given'}")
            if message.events:
                before = dict(self.entries)
                for kv in message.events:
                    self._apply(kv, before)
                    self.revision = max(self.revision, kv.mod_revision)
                if self.entries != before:
                    self.sink.answer(list(self.entries.values()))
            message = await stream.next()
        raise DiscoveryError("unreachable", "etcd ended the watch stream")

    def _apply(self, kv: KeyValue, previous: dict[str, BackendEntry]) -> None:
        """Apply one key (a read's or an event's) to :attr:`entries`; an invalid value keeps
        the key's ``previous`` valid one (module docstring)."""
        try:
            backend_id = kv.key[len(self.prefix):].decode("utf-8")
        except UnicodeDecodeError:
            self.sink.refused("invalid", f"key {kv.key!r}: the part after the prefix is not UTF-8")
            return
        error = id_error(backend_id)
        if error is not None:
            self.sink.refused("invalid", f"key {kv.key!r}: the backend id {error}")
            return
        if kv.deleted:
            self.entries.pop(backend_id, None)
            return
        try:
            if len(kv.value) > MAX_VALUE_BYTES:
                raise EntryError([])
            entry = parse_entry(json.loads(kv.value), backend_id=backend_id)
        except (ValueError, UnicodeDecodeError) as exc:
            why = str(exc) if isinstance(exc, EntryError) and exc.issues else "not a JSON object {address, weight} (or too large)"
            kept = previous.get(backend_id)
            note = f"; keeping its last valid value ({kept.address})" if kept is not None else "; ignored"
            self.sink.refused("invalid", f"key {backend_id!r}: invalid value: {why}{note}")
            if kept is not None:
                self.entries[backend_id] = kept
            return
        self.entries[backend_id] = entry
