"""Fuzz HTTP/3 frames through ``StreamScopedH3Connection`` on an in-memory QUIC pair.

Input: a sequence of client actions on a real aioquic client/server pair (datagrams are
passed in memory, no sockets): HEADERS frames with header lists encoded by a real QPACK
encoder (its dynamic-table inserts sent on the encoder stream before or after the frame, so
streams can block), HEADERS frames with a raw field section (references beyond the table),
raw encoder-stream instructions (large inserts, duplicates, capacity changes: the server
allows no dynamic table, so these are connection errors), DATA, unknown
and forbidden frame types, HEADERS frames announcing a huge length, control-stream frames
(also announcing a huge length), raw stream bytes, and client stream resets. The server side is ``StreamScopedH3Connection`` with the limits
``QuicConnectionTask`` gives it; each ``HeadersReceived`` goes through the conversion steps
of ``QuicConnectionTask._start_request`` (the validator's ``split_pseudo``, then
``ingress/multiplexed.py``: ``refusal``, ``build_request``).

Invariants: nothing escapes ``handle_event`` (aioquic turns connection errors into a
CONNECTION_CLOSE); a connection close never uses H3_INTERNAL_ERROR or QUIC INTERNAL_ERROR;
every request-stream problem is stream-scoped (a ``MalformedRequest`` whose stream was reset
with H3_MESSAGE_ERROR or H3_EXCESSIVE_LOAD) or a 400 from the validator
(``_start_request`` answers it through the answer door); a converted request has
lowercase non-pseudo names and no CR/LF/NUL anywhere; a decoded field section is bounded
(at most ``max_field_lines`` lines of static entries or literals); no
request stream buffers more than ``max_field_section_bytes``, no unidirectional stream more
than ``MAX_UNI_STREAM_BUFFER``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fdp import Reader
from _runner import instrumented, run

with instrumented(__name__):
    import pylsqpack
    from aioquic.buffer import encode_uint_var
    from aioquic.h3.connection import (
        ErrorCode,
        FrameType,
        encode_frame,
        encode_settings,
    )
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import StreamReset
    from aioquic.quic.packet import QuicErrorCode

    from spooky_trio.http.errors import ErrorResponse
    from spooky_trio.http.validate import split_pseudo
    from spooky_trio.ingress.h3 import (
        MAX_UNI_STREAM_BUFFER,
        MalformedRequest,
        StreamScopedH3Connection,
    )
    from spooky_trio.ingress.multiplexed import build_request, refusal
    from spooky_trio.ingress.tls import CLIENT_CERT_HEADER

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: small limits (as ``QuicConnectionTask`` derives them from resilience.protocol) so the
#: bounds are reachable with short inputs
MAX_HEADERS_COUNT = 16
MAX_HEADERS_BYTES = 1024
MAX_FIELD_SECTION_BYTES = 4 * MAX_HEADERS_BYTES + 64 * MAX_HEADERS_COUNT
MAX_FIELD_LINES = 2 * MAX_HEADERS_COUNT + 16
#: the server advertises QPACK_MAX_TABLE_CAPACITY 0 (no dynamic table); the client picks one
#: of these, and any above 0 is a misbehaving client the server must close cleanly
CLIENT_TABLE_CAPACITIES = [0, 256, 4096]
#: the longest QPACK static-table field line is under 100 bytes
MAX_STATIC_LINE_BYTES = 128
SERVER_ADDR = ("192.0.2.1", 443)
CLIENT_ADDR = ("198.51.100.7", 50000)
STREAM_IDS = [0, 4, 8, 12]
NAMES = [b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b"host", b"content-length",
         b"te", b"connection", b"cookie", b"x-forwarded-for", CLIENT_CERT_HEADER, b"X-Upper", b"x-big", b""]
VALUES = [b"GET", b"POST", b"CONNECT", b"https", b"/", b"/a?b", b"example.com", b"example.com:443", b"websocket",
          b"trailers", b"0", b"5", b"-1", b"", b" x", b"a\r\nb", b"v" * 200]
UNKNOWN_TYPES = [0x21, 0x21 + 0x1F * 7, 0x02, 0x04, 0x07, 0x0D, 0x05, 0x3FFF]
CONTROL_TYPES = [FrameType.SETTINGS, FrameType.GOAWAY, FrameType.MAX_PUSH_ID, 0x21, FrameType.DATA, FrameType.HEADERS]
BAD_CLOSE_CODES = {ErrorCode.H3_INTERNAL_ERROR, QuicErrorCode.INTERNAL_ERROR}


def _identity() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    return cert, key


_CERT, _KEY = _identity()


def _prefix_int(value: int, bits: int, first: int = 0) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Pair:
    """A handshaken client/server QUIC pair; the server runs ``StreamScopedH3Connection``."""

    def __init__(self) -> None:
        self.now = 1.0
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"], max_stream_data=1_000_000)
        server_cfg.certificate, server_cfg.private_key = _CERT, _KEY
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost", verify_mode=0)
        self.client = QuicConnection(configuration=client_cfg)
        self.client.connect(SERVER_ADDR, now=self.now)
        first = self.client.datagrams_to_send(now=self.now)
        from aioquic.buffer import Buffer
        from aioquic.quic.packet import pull_quic_header

        header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
        self.server = QuicConnection(configuration=server_cfg, original_destination_connection_id=header.destination_cid)
        self.close_codes: list[int] = []
        close = self.server.close

        def recording_close(error_code: int = QuicErrorCode.NO_ERROR, frame_type: int | None = None, reason_phrase: str = "") -> None:
            self.close_codes.append(error_code)
            close(error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase)

        self.server.close = recording_close  # type: ignore[method-assign]
        self.h3 = StreamScopedH3Connection(self.server, max_field_section_bytes=MAX_FIELD_SECTION_BYTES,
                                           max_field_lines=MAX_FIELD_LINES)
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        self.events: list[object] = []
        #: stream id -> error code of the server's RESET_STREAM, as the client saw it
        self.client_resets: dict[int, int] = {}
        self.pump()

    def pump(self) -> None:
        for _ in range(64):
            moved = False
            self.now += 0.001
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                moved = True
            while (event := self.server.next_event()) is not None:
                self.events.extend(self.h3.handle_event(event))  # must never raise
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                moved = True
            while (event := self.client.next_event()) is not None:
                if isinstance(event, StreamReset):
                    self.client_resets[event.stream_id] = event.error_code
            if not moved:
                return


def _headers(r: Reader) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(r.int_in_range(0, 20)):
        name = r.pick(NAMES) if r.boolean() else r.bytes_(30)
        value = r.pick(VALUES) if r.boolean() else r.bytes_(60)
        out.append((name, value))
    return out


def _encoder_instruction(r: Reader) -> bytes:
    kind = r.int_in_range(0, 3)
    if kind == 0:  # insert with literal name; the value can be repeated up to ~4 KiB
        name = r.bytes_(20) or b"x-big"
        value = r.bytes_(40) * r.int_in_range(1, 100)
        return _prefix_int(len(name), 5, 0x40) + name + _prefix_int(len(value), 7) + value
    if kind == 1:  # insert with (static or dynamic) name reference
        static = r.boolean()
        return _prefix_int(r.byte(), 6, 0x80 | (0x40 if static else 0)) + _prefix_int(len(v := r.bytes_(40)), 7) + v
    if kind == 2:  # duplicate
        return _prefix_int(r.byte(), 5, 0x00)
    return _prefix_int(r.pick([0, 32, 4096, 4097, 1 << 20]), 5, 0x20)  # set capacity


class Client:
    """Raw client streams: control, QPACK encoder, and request streams."""

    def __init__(self, pair: Pair, r: Reader) -> None:
        self.pair = pair
        self.quic = pair.client
        self.encoder = pylsqpack.Encoder()
        capacity = r.pick(CLIENT_TABLE_CAPACITIES)
        self.encoder_stream = self.quic.get_next_available_stream_id(is_unidirectional=True)
        self.quic.send_stream_data(self.encoder_stream, b"\x02" + self.encoder.apply_settings(capacity, 16))
        self.control: int | None = None
        if r.int_in_range(0, 7):  # usually a proper control stream with SETTINGS
            self.control = self.quic.get_next_available_stream_id(is_unidirectional=True)
            self.quic.send_stream_data(self.control, b"\x00" + encode_frame(FrameType.SETTINGS, encode_settings({0x1: capacity, 0x7: 16})))

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        try:
            self.quic.send_stream_data(stream_id, data, end)
        except (ValueError, RuntimeError, AssertionError):
            pass  # the stream was already ended or reset on our side: skip the action

    def action(self, r: Reader) -> None:
        kind = r.int_in_range(0, 10)
        sid = r.pick(STREAM_IDS)
        if kind <= 2:
            try:
                enc, block = self.encoder.encode(sid, _headers(r))
            except Exception:  # noqa: BLE001 - the client encoder refusing is not our concern
                return
            before = r.int_in_range(0, 3) != 0
            if before:
                self.send(self.encoder_stream, enc)
            self.send(sid, encode_frame(FrameType.HEADERS, block), r.boolean())
            if not before:
                self.pair.pump()
                self.send(self.encoder_stream, enc)
        elif kind == 3:  # raw field section: prefix + lines (e.g. indexes beyond the table)
            prefix = bytes([r.byte() % 8, r.byte() % 4])
            lines = r.bytes_(60) * r.int_in_range(1, 40)
            self.send(sid, encode_frame(FrameType.HEADERS, prefix + lines), r.boolean())
        elif kind == 4:
            self.send(sid, encode_frame(FrameType.DATA, r.bytes_()), r.boolean())
        elif kind == 5:
            self.send(sid, encode_frame(r.pick(UNKNOWN_TYPES), r.bytes_(30)), r.boolean())
        elif kind == 6:
            self.send(self.encoder_stream, b"".join(_encoder_instruction(r) for _ in range(r.int_in_range(1, 4))))
        elif kind == 7:
            self.send(sid, r.bytes_(), r.boolean())
        elif kind == 8:  # a HEADERS frame announcing more than the bound, then part of it
            size = r.pick([MAX_FIELD_SECTION_BYTES + 1, 1 << 20, (1 << 62) - 1])
            self.send(sid, encode_uint_var(FrameType.HEADERS) + encode_uint_var(size) + r.bytes_() * r.int_in_range(1, 30))
        elif kind == 10:  # a control-stream frame, possibly announcing far more than it sends
            if self.control is None:
                self.control = self.quic.get_next_available_stream_id(is_unidirectional=True)
                self.send(self.control, b"\x00")
            frame_type = r.pick(CONTROL_TYPES)
            size = r.pick([None, MAX_UNI_STREAM_BUFFER + 1, 1 << 40])
            payload = r.bytes_() * r.int_in_range(1, 100)
            if size is None:
                self.send(self.control, encode_frame(frame_type, payload))
            else:
                self.send(self.control, encode_uint_var(frame_type) + encode_uint_var(size) + payload)
        else:
            try:
                self.quic.reset_stream(sid, r.byte())
            except (ValueError, RuntimeError, AssertionError):
                pass


def _check_request(stream_id: int, raw: list[tuple[bytes, bytes]]) -> None:
    lines_bytes = sum(len(n) + len(v) for n, v in raw)
    assert len(raw) <= MAX_FIELD_LINES, (stream_id, len(raw))
    # no dynamic table: a line is a static entry or literals (Huffman expands at most 8/5)
    assert lines_bytes <= MAX_FIELD_LINES * MAX_STATIC_LINE_BYTES + 2 * MAX_FIELD_SECTION_BYTES, lines_bytes
    head = split_pseudo(raw)
    if isinstance(head, ErrorResponse):
        return  # _start_request answers 400 through the answer door
    if refusal(head, max_count=MAX_HEADERS_COUNT, max_bytes=MAX_HEADERS_BYTES, websocket=False) is not None:
        return  # likewise (431, 400, 501)
    pseudo = {name: value for name, value in raw if name[:1] == b":"}
    request = build_request(head, None, protocol="HTTP/3", client_address=CLIENT_ADDR, subject=None)
    for name, value in request.headers:
        assert name and name == name.lower() and name[:1] != b":" and name != CLIENT_CERT_HEADER, name
        assert not any(c in value for c in b"\r\n\x00"), (name, value)
    for value in (request.method, request.scheme, request.authority, request.path):
        assert not any(c in value for c in b"\r\n\x00"), value
    if request.method != b"CONNECT":
        assert b":scheme" in pseudo and b":path" in pseudo


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    pair = Pair()
    client = Client(pair, r)
    started: set[int] = set()
    for _ in range(r.int_in_range(1, 16)):
        client.action(r)
        pair.pump()
        for event in pair.events:
            if isinstance(event, HeadersReceived) and event.stream_id % 4 == 0 and event.stream_id not in started:
                started.add(event.stream_id)
                _check_request(event.stream_id, event.headers)
            elif isinstance(event, MalformedRequest):
                assert event.stream_id % 4 == 0, event
                stream = pair.server._streams.get(event.stream_id)
                assert stream is None or stream.sender._reset_error_code in (
                    ErrorCode.H3_MESSAGE_ERROR, ErrorCode.H3_EXCESSIVE_LOAD), event
        pair.events.clear()
        for stream in pair.h3._stream.values():
            bound = MAX_FIELD_SECTION_BYTES if stream.stream_id % 4 == 0 else MAX_UNI_STREAM_BUFFER
            assert len(stream.buffer) <= bound, (stream.stream_id, len(stream.buffer))
        assert not BAD_CLOSE_CODES & set(pair.close_codes), pair.close_codes
        if pair.close_codes:
            return


if __name__ == "__main__":
    run(test_one_input)
