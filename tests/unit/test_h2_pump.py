"""H2WriterPump (http/h2_pump.py) alone: no sockets, no h2; trio.testing streams and a fake
``data_to_send``. Synchronisation is by ``wait_all_tasks_blocked``, never by sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from spooky_trio.http.h2_pump import OUTBOX_LIMIT, H2WriterPump

settle = trio.testing.wait_all_tasks_blocked
#: a pump bug shows up as a wait that never returns: fail in seconds, not after pytest's 120
pytestmark = pytest.mark.timeout(10)


class FakeH2:
    """Stands in for h2's output buffer: ``queue`` adds bytes, ``data_to_send`` takes all."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.takes = 0

    def queue(self, data: bytes) -> None:
        self.pending += data

    def data_to_send(self) -> bytes:
        self.takes += 1
        data = bytes(self.pending)
        self.pending.clear()
        return data


def recorder() -> tuple[trio.testing.MemorySendStream, list[bytes]]:
    """A send stream that never blocks, and the list of what each ``send_all`` carried."""
    sends: list[bytes] = []
    stream = trio.testing.MemorySendStream()

    async def record() -> None:
        sends.append(stream.get_data_nowait())

    stream.send_all_hook = record
    return stream, sends


@asynccontextmanager
async def running(pump: H2WriterPump) -> AsyncIterator[list[object]]:
    """Run the pump's writer in a nursery; the list receives what ``run`` returned."""
    result: list[object] = []

    async def writer() -> None:
        result.append(await pump.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await settle()
        yield result
        pump.close()


async def test_everything_queued_before_the_writer_runs_goes_out_in_one_send_all() -> None:
    h2, (stream, sends) = FakeH2(), recorder()
    pump = H2WriterPump(stream, h2.data_to_send)
    async with running(pump):
        h2.queue(b"A")
        pump.collect()  # moved to the outbox: first
        h2.queue(b"B")
        pump.kick()
        h2.queue(b"C")
        pump.kick()
        assert await pump.written()
        assert sends == [b"ABC"]
        h2.queue(b"D")
        pump.kick()
        assert await pump.written()
    assert sends == [b"ABC", b"D"]


async def test_the_writer_wakes_only_when_there_is_output() -> None:
    h2, (stream, sends) = FakeH2(), recorder()
    pump = H2WriterPump(stream, h2.data_to_send)
    async with running(pump):
        takes = h2.takes
        assert pump.collect() is False  # h2 queued nothing: no kick
        await settle()
        assert h2.takes == takes + 1 and sends == []  # only collect's own look
        assert await pump.written()  # nothing kicked: nothing to wait for
        h2.queue(b"x")
        assert pump.collect() is False  # below the outbox limit
        assert await pump.written()
        assert sends == [b"x"]


async def test_written_waits_for_the_send_and_taken_only_for_the_take() -> None:
    sender, receiver = trio.testing.lockstep_stream_pair()  # send_all returns once read
    h2 = FakeH2()
    pump = H2WriterPump(sender, h2.data_to_send)
    events: list[str] = []

    async def wait(name: str, waiter: object) -> None:
        assert await waiter  # type: ignore[misc]
        events.append(name)

    async with running(pump), trio.open_nursery() as nursery:
        h2.queue(b"x" * 100)
        pump.unsent += 100
        pump.kick()
        nursery.start_soon(wait, "taken", pump.taken(100))
        nursery.start_soon(wait, "written", pump.written())
        await settle()
        assert events == ["taken"] and pump.unsent == 0  # the writer sits in send_all
        assert await receiver.receive_some() == b"x" * 100
        await settle()
        assert events == ["taken", "written"]


async def test_waits_that_are_already_satisfied_return_without_a_checkpoint() -> None:
    pump = H2WriterPump(recorder()[0], FakeH2().data_to_send)  # no writer runs: a wait would hang
    pump.unsent = 99
    with trio.testing.assert_no_checkpoints():
        assert await pump.taken(100)
        assert await pump.written()  # nothing kicked
        await pump.backoff()  # empty outbox


async def test_the_reader_backs_off_while_its_answers_wait_for_a_peer_that_does_not_read() -> None:
    sender, receiver = trio.testing.lockstep_stream_pair()
    h2 = FakeH2()
    pump = H2WriterPump(sender, h2.data_to_send, outbox_limit=1000)
    resumed: list[int] = []

    async def reader(batch: int) -> None:
        h2.queue(b"p" * 600)
        if pump.collect():
            await pump.backoff()
        resumed.append(batch)

    async with running(pump), trio.open_nursery() as nursery:
        await reader(1)  # 600 < 1000: no back-off
        await reader(2)  # 1200 queued: waits until the writer takes them
        assert resumed == [1, 2] and len(pump.outbox) == 0  # the writer took both, sits in send_all
        await reader(3)  # 600 again: goes on reading
        nursery.start_soon(reader, 4)
        await settle()
        assert resumed == [1, 2, 3]  # batch 4 made it 1200 again and the writer is stuck
        assert len(pump.outbox) == 1200
        assert len(await receiver.receive_some()) == 1200  # the peer reads the first batch
        await settle()
        assert resumed == [1, 2, 3, 4]
        assert len(await receiver.receive_some()) == 1200


async def test_close_releases_every_waiter_with_false_and_ends_run() -> None:
    sender, _receiver = trio.testing.lockstep_stream_pair()
    h2 = FakeH2()
    pump = H2WriterPump(sender, h2.data_to_send, outbox_limit=10)
    results: dict[str, object] = {}

    async def wait(name: str, waiter: object) -> None:
        results[name] = await waiter  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        h2.queue(b"first")
        pump.kick()
        run_result: list[object] = []

        async def writer() -> None:
            run_result.append(await pump.run())

        nursery.start_soon(writer)
        await settle()  # the writer sits in send_all: the peer does not read
        h2.queue(b"0123456789")
        assert pump.collect()
        pump.unsent = 50
        nursery.start_soon(wait, "written", pump.written())
        nursery.start_soon(wait, "taken", pump.taken(10))
        nursery.start_soon(wait, "backoff", pump.backoff())
        await settle()
        assert results == {}
        pump.close()
        await settle()
        assert results == {"written": False, "taken": False, "backoff": None}
        assert pump.closed
        nursery.cancel_scope.cancel()  # close() does not interrupt a send in progress
    # a later wait does not block either
    pump.kick()
    assert await pump.written() is False
    assert await pump.taken(10) is False


async def test_close_ends_an_idle_writer() -> None:
    pump = H2WriterPump(recorder()[0], FakeH2().data_to_send)
    async with running(pump) as result:
        pump.close()
        await settle()
        assert result == [None]


async def test_a_broken_stream_closes_the_pump_and_run_returns_the_error() -> None:
    sender, receiver = trio.testing.lockstep_stream_pair()
    h2 = FakeH2()
    pump = H2WriterPump(sender, h2.data_to_send)
    async with running(pump) as result:
        await receiver.aclose()
        h2.queue(b"x")
        pump.kick()
        assert await pump.written() is False
        await settle()
        assert pump.closed
        assert len(result) == 1 and isinstance(result[0], trio.BrokenResourceError)


async def test_finish_writes_what_is_queued_then_run_returns() -> None:
    h2, (stream, sends) = FakeH2(), recorder()
    pump = H2WriterPump(stream, h2.data_to_send)
    async with running(pump) as result:
        h2.queue(b"GOAWAY")
        pump.kick()
        pump.finish()
        await settle()
        assert sends == [b"GOAWAY"] and result == [None]
        assert not pump.closed  # finished, not failed: later waits still see written bytes
        assert await pump.written()


async def test_queue_frame_goes_after_what_h2_queued_before_it() -> None:
    h2, (stream, sends) = FakeH2(), recorder()
    pump = H2WriterPump(stream, h2.data_to_send)
    h2.queue(b"settings,")
    pump.kick()
    pump.queue_frame(b"goaway,")
    h2.queue(b"ack")
    pump.kick()
    async with running(pump):
        assert await pump.written()
    assert sends == [b"settings,goaway,ack"]


async def test_a_bug_in_the_writer_propagates() -> None:
    def broken() -> bytes:
        raise ValueError("bug")

    pump = H2WriterPump(recorder()[0], broken)
    pump.kick()
    with pytest.raises(ValueError, match="bug"):
        await pump.run()
    assert not pump.closed  # the owner decides (the upstream engine fails the connection)


def test_the_default_outbox_limit_is_64_kib() -> None:
    assert OUTBOX_LIMIT == 64 * 1024
