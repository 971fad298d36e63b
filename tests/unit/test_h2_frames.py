"""http/h2_frames.py: h2's _receive_frame copied without the eager repr(frame)."""

from __future__ import annotations

import hashlib
import inspect

import h2.config
import h2.connection
import h2.events
import hyperframe.frame
import pytest

from spooky_trio.http.h2_frames import H2_RECEIVE_FRAME_SHA256, LazyReprH2Connection


def test_the_copied_method_is_the_installed_h2s() -> None:
    """When h2's _receive_frame changes, the copy must be redone (or dropped)."""
    source = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert hashlib.sha256(source.encode()).hexdigest() == H2_RECEIVE_FRAME_SHA256
    assert 'self.config.logger.trace("Received frame: %s", repr(frame))' in source


def _exchange(server_logger: h2.config.DummyLogger | None = None) -> tuple[list[h2.events.Event], list[h2.events.Event]]:
    """A client request and a server answer through LazyReprH2Connection on both sides."""
    client = LazyReprH2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = LazyReprH2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None, logger=server_logger))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"a")], end_stream=True)
    got = server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"hello", end_stream=True)
    answer = client.receive_data(server.data_to_send())
    return got, answer


def test_a_frame_on_a_stream_the_server_reset_is_a_stream_error() -> None:
    """h2's StreamClosedError branch, kept by the copy: RST_STREAM back, no exception."""
    client = LazyReprH2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = LazyReprH2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"a")])
    server.receive_data(client.data_to_send())
    server.reset_stream(1)
    server.data_to_send()
    late = hyperframe.frame.DataFrame(1, data=b"late")
    assert server.receive_data(late.serialize()) == []
    sent = server.data_to_send()
    assert sent[3] == 0x3 and sent[5:9] == (1).to_bytes(4, "big")  # RST_STREAM on stream 1


def test_no_frame_is_repred_when_nothing_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting_repr(self: hyperframe.frame.Frame) -> str:
        calls.append(type(self).__name__)
        return "frame"

    monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", counting_repr)
    got, answer = _exchange()
    assert [type(e) for e in got][-1] is h2.events.StreamEnded
    assert any(isinstance(e, h2.events.DataReceived) and e.data == b"hello" for e in answer)
    assert calls == []


def test_a_logger_that_emits_still_gets_the_frames_repr() -> None:
    lines: list[str] = []

    class Trace(h2.config.DummyLogger):
        def trace(self, fmt: str, *args: object) -> None:
            lines.append(fmt % args)

    _exchange(Trace())
    assert any(line.startswith("Received frame: HeadersFrame(stream_id=1") for line in lines)
