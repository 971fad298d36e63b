"""A tiny scripted HTTP/3 server (aioquic on a Trio UDP socket) for behaviours that hypercorn
does not offer: stream resets, HTTP/3 trailers and GOAWAY.

Every route answers once the request is complete (its FIN arrived):
  ``/echo``           200 with the request body
  ``/bytes/N``        200 with N bytes (all queued at once; the client's flow control paces it)
  ``/reset``          RESET_STREAM with H3_MESSAGE_ERROR instead of a response
  ``/reject``         RESET_STREAM with H3_REQUEST_REJECTED (not processed, RFC 9114 8.1)
  ``/partial-reset``  200 + some body, then RESET_STREAM with H3_INTERNAL_ERROR
  ``/trailers``       200 + body + a trailer section
  ``/goaway``         200, then a GOAWAY frame on the control stream
  anything else       200 ``ok``
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import trio
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, encode_frame
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

Address = tuple[str, int]


class ScriptedH3Server:
    """Serve the routes above on 127.0.0.1 until cancelled (one QUIC connection per client address)."""

    def __init__(self, certs_dir: Path) -> None:
        self._config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        self._config.load_cert_chain(str(certs_dir / "localhost.pem"), str(certs_dir / "localhost.key"))
        self._connections: dict[Address, tuple[QuicConnection, H3Connection]] = {}
        self._deferred_resets: list[tuple[QuicConnection, int, int]] = []  # after a transmit
        self._requests: dict[tuple[Address, int], tuple[bytes, bytearray]] = {}  # -> (path, body)
        self.port = 0
        #: request paths in arrival order (complete requests)
        self.paths: list[bytes] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task_status.started()
            while True:
                timers = [t for quic, _ in self._connections.values() if (t := quic.get_timer()) is not None]
                with trio.move_on_at(min(timers, default=math.inf)):
                    data, addr = await sock.recvfrom(65536)
                    self._receive(data, addr)
                now = trio.current_time()
                for quic, _ in list(self._connections.values()):
                    timer = quic.get_timer()
                    if timer is not None and timer <= now:
                        quic.handle_timer(now)
                for addr, (quic, h3) in list(self._connections.items()):
                    self._process(addr, quic, h3)
                    for datagram, to in quic.datagrams_to_send(now=now):
                        await sock.sendto(datagram, to)
                while self._deferred_resets:  # a reset stops retransmission of what preceded it
                    quic, sid, code = self._deferred_resets.pop()
                    quic.reset_stream(sid, code)
                    for datagram, to in quic.datagrams_to_send(now=now):
                        await sock.sendto(datagram, to)

    def _receive(self, data: bytes, addr: Address) -> None:
        if addr not in self._connections:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=self._config.connection_id_length)
            except ValueError:
                return
            quic = QuicConnection(configuration=self._config, original_destination_connection_id=header.destination_cid)
            self._connections[addr] = (quic, H3Connection(quic))
        quic, _ = self._connections[addr]
        quic.receive_datagram(data, addr, now=trio.current_time())

    def _process(self, addr: Address, quic: QuicConnection, h3: H3Connection) -> None:
        while (event := quic.next_event()) is not None:
            for h3_event in h3.handle_event(event):
                if not isinstance(h3_event, (HeadersReceived, DataReceived)):
                    continue
                key = (addr, h3_event.stream_id)
                if isinstance(h3_event, HeadersReceived) and key not in self._requests:
                    self._requests[key] = (dict(h3_event.headers).get(b":path", b""), bytearray())
                elif isinstance(h3_event, DataReceived):
                    self._requests[key][1].extend(h3_event.data)
                if h3_event.stream_ended:
                    path, body = self._requests.pop(key)
                    self.paths.append(path)
                    self._respond(quic, h3, h3_event.stream_id, path, bytes(body))

    def _respond(self, quic: QuicConnection, h3: H3Connection, sid: int, path: bytes, body: bytes) -> None:
        if path == b"/echo":
            h3.send_headers(sid, [(b":status", b"200")])
            h3.send_data(sid, body, end_stream=True)
        elif path.startswith(b"/bytes/"):
            h3.send_headers(sid, [(b":status", b"200")])
            h3.send_data(sid, bytes(int(path[7:])), end_stream=True)
        elif path == b"/reset":
            quic.reset_stream(sid, ErrorCode.H3_MESSAGE_ERROR)
        elif path == b"/reject":
            quic.reset_stream(sid, ErrorCode.H3_REQUEST_REJECTED)
        elif path == b"/partial-reset":
            h3.send_headers(sid, [(b":status", b"200")])
            h3.send_data(sid, b"partial", end_stream=False)
            self._deferred_resets.append((quic, sid, ErrorCode.H3_INTERNAL_ERROR))
        elif path == b"/trailers":
            h3.send_headers(sid, [(b":status", b"200")])
            h3.send_data(sid, b"with trailers", end_stream=False)
            h3.send_headers(sid, [(b"grpc-status", b"0"), (b"x-checksum", b"abc")], end_stream=True)
        else:
            h3.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            h3.send_data(sid, b"ok", end_stream=True)
            if path == b"/goaway":
                control = h3._local_control_stream_id
                assert control is not None
                quic.send_stream_data(control, encode_frame(FrameType.GOAWAY, encode_uint_var(sid + 4)))
