"""The HTTP/2 server engine (ingress/h2_engine.py): a malformed request is a stream error.

Driven sans-IO with h2's own client: what h2 would make a connection-wide ProtocolError
after decoding a header block is a reset of that stream alone (the sibling stream and the
connection keep working), while HPACK trouble stays a connection error. The pin in
pyproject.toml is the range the engine declares, and a moved hook fails the import.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, HeadersFrame, RstStreamFrame
from packaging.requirements import Requirement

from spooky_trio.ingress.h2_engine import (
    SUPPORTED_H2,
    MalformedStream,
    StreamScopedH2Connection,
)

ROOT = Path(__file__).resolve().parents[2]
GET = [(":method", "GET"), (":scheme", "https"), (":authority", "example.com"), (":path", "/")]


def pair() -> tuple[h2.connection.H2Connection, StreamScopedH2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = StreamScopedH2Connection(h2.config.H2Configuration(client_side=False, validate_inbound_headers=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server


def raw_headers(client: h2.connection.H2Connection, stream_id: int, headers: list[tuple[str, str]]) -> bytes:
    """A HEADERS frame h2's client would refuse to send (it validates outbound headers)."""
    frame = HeadersFrame(stream_id)
    frame.data = client.encoder.encode(headers)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def test_conflicting_content_length_resets_that_stream_only() -> None:
    client, server = pair()
    bad = raw_headers(client, 1, [(":method", "POST"), *GET[1:], ("content-length", "1"), ("content-length", "2")])
    client.send_headers(3, GET, end_stream=True)
    events = server.receive_data(bad + client.data_to_send())
    malformed = [e for e in events if isinstance(e, MalformedStream)]
    assert [e.stream_id for e in malformed] == [1]
    assert [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)] == [3]
    assert [(f.stream_id, f.error_code) for f in frames(server.data_to_send()) if isinstance(f, RstStreamFrame)] == [
        (1, ErrorCodes.PROTOCOL_ERROR)]
    server.send_headers(3, [(":status", "204")], end_stream=True)  # the sibling is still served
    answered = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 3 for e in answered)


def test_hpack_garbage_stays_a_connection_error() -> None:
    client, server = pair()
    frame = HeadersFrame(1)
    frame.data = b"\xff\xff\xff\xff\xff"  # an index far past the tables
    frame.flags.add("END_HEADERS")
    with pytest.raises(h2.exceptions.ProtocolError):
        server.receive_data(frame.serialize())


def test_pyproject_pins_the_supported_range_and_it_is_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "h2"]
    assert [str(p.specifier) for p in pins] == [str(Requirement("h2" + SUPPORTED_H2).specifier)]
    assert pins[0].specifier.contains(importlib.metadata.version("h2"))


def test_a_moved_hook_fails_the_import_naming_it() -> None:
    code = (
        "import h2.connection\n"
        "del h2.connection.H2Connection._get_or_create_stream\n"
        "import spooky_trio.ingress.h2_engine\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "UnsupportedH2" in result.stderr and "H2Connection._get_or_create_stream changed" in result.stderr
    assert f"h2{SUPPORTED_H2}" in result.stderr
