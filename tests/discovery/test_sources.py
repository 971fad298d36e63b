"""The sources without their servers: the polling rhythm (MockClock), the file source on
real files, SRV records to backends, and the etcd gateway's encodings."""

from __future__ import annotations

import logging
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio
import trio.testing

from spooky_trio.config.backend_entries import BackendEntry
from spooky_trio.discovery import file as file_module
from spooky_trio.discovery.etcd_gateway import KeyValue, _watch_message, prefix_range_end
from spooky_trio.discovery.file import FileSource
from spooky_trio.discovery.membership import DiscoveryState
from spooky_trio.discovery.service import poll
from spooky_trio.discovery.source import Answer, DiscoveryError, SourceSink
from spooky_trio.discovery.srv import srv_entries

KEY = ("app", "file", ("/x.yaml",))


class CountingMetrics:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str, str]] = []

    def discovery_update(self, pool: str, source: str) -> None:
        self.updates.append((pool, source))

    def discovery_error(self, pool: str, source: str, reason: str) -> None:
        self.errors.append((pool, source, reason))


class ScriptedSource:
    """Answers from a script: an Answer, None (unchanged) or a DiscoveryError, at clock times."""

    def __init__(self, script: list[Answer | None | DiscoveryError]) -> None:
        self.script = script
        self.calls: list[float] = []

    async def fetch(self) -> Answer | None:
        self.calls.append(trio.current_time())
        step = self.script.pop(0) if self.script else None
        if isinstance(step, DiscoveryError):
            raise step
        return step


def entries(*names: str) -> list[BackendEntry]:
    return [BackendEntry(name, f"http://{name}.internal:80") for name in names]


async def test_polling_rhythm_retries_sooner_after_failures_and_follows_ttl(autojump_clock: trio.testing.MockClock,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    state, metrics = DiscoveryState(), CountingMetrics()
    sink = SourceSink(state, KEY, metrics)
    down = DiscoveryError("unreachable", "refused")
    source = ScriptedSource([Answer(entries("a")), None, down, down, down, Answer(entries("a", "b"), ttl=2.0),
                             Answer([]), Answer(entries("b"))])
    caplog.set_level(logging.DEBUG, "spooky.discovery")
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(poll, source, sink, 10.0)
        assert [e.id for e in (state.status(KEY).entries or {}).values()] == ["a"]  # started after the first answer
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    offsets = [round(t - start, 3) for t in source.calls[:9]]
    # period 10; after failures 1, 2, 4 s; a TTL of 2 s brings the next query forward; an
    # empty answer is a failure (retry after 1 s)
    assert offsets == [0, 10, 20, 21, 23, 27, 29, 30, 40]
    assert list((state.status(KEY).entries or {}).keys()) == ["b"]
    assert metrics.updates == [("app", "file")] * 3
    assert metrics.errors == [("app", "file", "unreachable")] * 3 + [("app", "file", "empty")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "pool app (file /x.yaml): discovery failed (unreachable: refused); keeping its last good set of 1 backends",
        "pool app (file /x.yaml): discovery failed (empty: the source named no backend); keeping its last good set of 2 backends",
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "pool app (file /x.yaml): backend b added (http://b.internal:80, default weight)" in infos
    assert "pool app (file /x.yaml): the source answers again (2 backends)" in infos
    assert "pool app (file /x.yaml): backend a removed (http://a.internal:80): it takes no new requests, its requests in flight finish" in infos


async def test_an_unexpected_error_is_logged_counted_and_the_source_keeps_going(autojump_clock: trio.testing.MockClock,
                                                                                 caplog: pytest.LogCaptureFixture) -> None:
    state, metrics = DiscoveryState(), CountingMetrics()

    class Broken(ScriptedSource):
        async def fetch(self) -> Answer | None:
            if not self.calls:
                self.calls.append(trio.current_time())
                raise KeyError("surprise")
            return await super().fetch()

    source = Broken([Answer(entries("a"))])
    async with trio.open_nursery() as nursery:
        await nursery.start(poll, source, SourceSink(state, KEY, metrics), 10.0)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert metrics.errors == [("app", "file", "internal")] and list((state.status(KEY).entries or {})) == ["a"]
    assert any(r.exc_info and "unexpected error" in r.getMessage() for r in caplog.records)


async def test_the_file_source_reads_parses_once_per_content_and_says_why_it_fails(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.yaml"
    source = FileSource(str(path), timeout=5.0)
    with pytest.raises(DiscoveryError) as missing:
        await source.fetch()
    assert missing.value.reason == "not_found"
    path.write_text("- {id: a, address: 'http://10.0.0.1:80', weight: 2}\n")
    answer = await source.fetch()
    assert answer is not None and answer.entries == [BackendEntry("a", "http://10.0.0.1:80", 2)]
    assert await source.fetch() is None  # the same content: no news
    path.write_text("- {id: a, address: 'http://10.0.0.1:80', weight: 0}\n")
    with pytest.raises(DiscoveryError, match=r"b.yaml: \[0\].weight: line 1 col 50: must be >= 1") as invalid:
        await source.fetch()
    assert invalid.value.reason == "invalid"
    assert await source.fetch() is None  # an invalid content is reported once
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DiscoveryError, match="not UTF-8"):
        await source.fetch()
    monkeypatch.setattr(file_module, "MAX_FILE_BYTES", 10)
    path.write_text("- {id: a, address: 'http://10.0.0.1:80'}\n")
    with pytest.raises(DiscoveryError) as large:
        await source.fetch()
    assert large.value.reason == "too_large"


def srv(text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, text)


def test_srv_records_lowest_priority_group_weights_and_ids() -> None:
    records = [srv("10 60 8080 b2.svc.test."), srv("10 0 8081 B1.svc.test."), srv("20 100 9000 b3.svc.test."),
               srv("10 5 8080 b2.svc.test."), srv("5 10 0 bad.svc.test."), srv("10 1 8443 .")]
    assert srv_entries(records, "http") == [  # type: ignore[arg-type]
        BackendEntry("b1.svc.test:8081", "http://b1.svc.test:8081", 1),  # weight 0 -> 1, name lower-cased
        BackendEntry("b2.svc.test:8080", "http://b2.svc.test:8080", 60),  # one target twice: the larger weight
    ]
    # priority 5 holds only a port-0 record, which is no backend: the next group serves
    assert [e.id for e in srv_entries([srv("20 1 9000 b3.svc.test.")], "https")] == ["b3.svc.test:9000"]  # type: ignore[list-item]
    assert srv_entries([srv("0 0 0 .")], "https") == []  # type: ignore[list-item]


def test_etcd_prefix_range_and_watch_messages() -> None:
    assert prefix_range_end(b"/spooky/api/") == b"/spooky/api0"
    assert prefix_range_end(b"a\xff\xff") == b"b" and prefix_range_end(b"\xff") == b"\x00"
    created = _watch_message(b'{"result":{"header":{"revision":"7"},"created":true}}')
    assert created.created and created.revision == 7 and created.events == ()
    events = _watch_message(b'{"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"L3AvYQ==","value":"e30=",'
                            b'"mod_revision":"8"}},{"type":"DELETE","kv":{"key":"L3AvYg==","mod_revision":"9"}}]}}')
    assert events.events == (KeyValue(b"/p/a", b"{}", False, 8), KeyValue(b"/p/b", b"", True, 9))
    compacted = _watch_message(b'{"result":{"header":{"revision":"30"},"canceled":true,"compact_revision":"20"}}')
    assert compacted.canceled and compacted.compact_revision == 20
    with pytest.raises(DiscoveryError):
        _watch_message(b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}')
    with pytest.raises(DiscoveryError):
        _watch_message(b"not json")
