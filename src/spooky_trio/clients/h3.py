"""An HTTP/3 client: aioquic's sans-IO QUIC + HTTP/3 state machines driven on a Trio UDP socket.

Used by ``spooky-trio request`` and by the proxy's integration tests, which need both normal
requests (:meth:`H3Client.request`, :meth:`H3Client.stream_request`) and deliberately
malformed ones (:meth:`H3Client.send_raw_headers`).

Design
------
* One **driver task** per connection (in a nursery owned by :meth:`H3Client.connect`) waits
  for the socket to become readable, drains every queued datagram into
  ``QuicConnection.receive_datagram``, turns QUIC events into HTTP/3 events and dispatches
  them to per-stream ``StreamState`` objects, then transmits once for the whole burst
  (:mod:`spooky_trio.upstream.h3_transport`, shared with the upstream HTTP/3 pool).
* **Timers**: the driver waits inside a cancel scope whose deadline is aioquic's
  ``get_timer()`` (aioquic is fed ``trio.current_time()``, so both share one clock); every
  transmit, from any task, moves that deadline. There is no per-packet or per-timer task.
* **Requests** run in the caller's tasks: they queue frames on the (synchronous) aioquic
  objects and call ``_transmit``, which a lock serialises. Many concurrent
  requests on one connection are therefore fine.
* **Send-side backpressure**: aioquic buffers any amount written to a stream. Bodies are
  written in ``SEND_CHUNK`` pieces and the writer waits (woken after every transmit) until
  less than one chunk is still unsent before writing the next, so per stream at most two
  chunks wait locally; data in flight is bounded by the server's flow-control credit.
* **Receive-side backpressure**: see :mod:`spooky_trio.upstream.quic_engine` — a stream's receive
  window only advances as the application reads, so a slow reader holds the server back.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Union
from urllib.parse import urlsplit

import trio
from aioquic.h3.connection import ErrorCode
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket

from spooky_trio.clients.errors import (
    H3ClientError,
    H3ConnectError,
    H3ConnectionLost,
    H3StreamReset,
)
from spooky_trio.clients.h3_stream import (
    H3Response,
    H3StreamResponse,
    Headers,
    StreamState,
)
from spooky_trio.upstream.h3_transport import SEND_CHUNK, H3Transport, open_udp_socket
from spooky_trio.upstream.quic_engine import FlowControlledQuicConnection

__all__ = ["H3Client", "H3ClientError", "H3ConnectError", "H3ConnectionLost", "H3Response", "H3StreamReset", "H3StreamResponse"]

Body = Union[bytes, bytearray, memoryview, AsyncIterable[bytes], None]

H3_REQUEST_CANCELLED = int(ErrorCode.H3_REQUEST_CANCELLED)


class H3Client(H3Transport):
    """One QUIC connection carrying HTTP/3 requests.

    Use ``async with H3Client.connect(host, port, ...) as client:``; the constructor is
    internal. Any number of tasks may issue requests concurrently.
    """

    # -- connection setup / teardown -------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        server_name: str | None = None,
        cafile: str | None = None,
        verify: bool = True,
        alpn: Sequence[str] = ("h3",),
        idle_timeout: float = 30.0,
        max_stream_data: int = 1024 * 1024,
        max_data: int = 4 * 1024 * 1024,
        connect_timeout: float = 10.0,
        session_ticket: SessionTicket | None = None,
        session_ticket_handler: Callable[[SessionTicket], None] | None = None,
        early_data: bool = False,
        local_host: str | None = None,
    ) -> AsyncIterator[H3Client]:
        """Connect, complete the QUIC/TLS handshake and yield the client; close on exit.

        ``server_name`` is used for SNI, certificate verification and the default
        ``:authority`` (default: ``host``). ``max_stream_data`` is the per-stream receive
        window (the most a slow reader buffers per stream). Raises :class:`H3ConnectError`
        if resolution, the handshake or certificate verification fails, or if no handshake
        completes within ``connect_timeout`` seconds.

        Resumption: ``session_ticket_handler`` receives the tickets the server issues;
        ``session_ticket`` resumes with one. With ``early_data`` (and a ticket that allows
        it) the client is yielded before the handshake completes, so the first requests
        go out as 0-RTT early data; :attr:`early_data_accepted` tells whether the server
        took it (known once the handshake completed: see :meth:`wait_handshake`).
        ``local_host`` binds the client's socket to that address (e.g. another loopback
        address, to appear as another client).
        """
        target = f"{host}:{port}"
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(alpn),
            server_name=server_name or host,
            verify_mode=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            idle_timeout=idle_timeout,
            max_stream_data=max_stream_data,
            max_data=max_data,
            session_ticket=session_ticket,
        )
        if cafile is not None:
            try:
                with open(cafile, "rb"):
                    pass
            except OSError as exc:
                raise H3ConnectError(f"cannot read CA file {cafile}: {exc.strerror or exc}") from None
            config.load_verify_locations(cafile=cafile)
        name = server_name or host
        authority = (f"[{name}]" if ":" in name else name) + ("" if port == 443 else f":{port}")
        sock, peer = await open_udp_socket(host, port, local_host=local_host)
        try:
            quic = FlowControlledQuicConnection(configuration=config, session_ticket_handler=session_ticket_handler)
            client = cls(sock, peer, quic, target, authority)
            client._quic.connect(client._peer, now=trio.current_time())
            error: BaseException | None = None
            async with trio.open_nursery() as nursery:
                client._nursery = nursery
                nursery.start_soon(client._drive)
                try:
                    if not (early_data and session_ticket is not None):
                        await client._wait_handshake(connect_timeout)
                    yield client
                except BaseException as exc:  # re-raised below, outside the nursery: no ExceptionGroup
                    error = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
                    nursery.cancel_scope.cancel()
            if error is not None:
                raise error
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url_or_path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: Body = None,
        authority: str | None = None,
    ) -> H3Response:
        """Send a well-formed request and read the whole response into memory.

        ``url_or_path`` is a path (``/x?y``) or an ``https://`` URL (whose authority is used
        unless ``authority`` is given). Header names are lower-cased; ``content-length`` is
        added for bytes bodies. A server reset yields a response with ``reset_code`` set.
        """
        head = self._request_headers(method, url_or_path, headers, body, authority)
        async with self._exchange(head, body, end_stream=True, after_goaway=False) as resp:
            return await self._collect(resp)

    async def send_raw_headers(self, headers: Sequence[tuple[bytes, bytes]], *, body: bytes | None = None, end_stream: bool = True) -> H3Response:
        """Send exactly ``headers`` (no validation, order and case kept) on a new stream,
        then ``body``; end the request side if ``end_stream``. Returns the response, or an
        :class:`H3Response` with ``reset_code`` set if the server reset the stream."""
        async with self._exchange(list(headers), body, end_stream=end_stream, after_goaway=True) as resp:
            return await self._collect(resp)

    @asynccontextmanager
    async def stream_request(
        self,
        method: str,
        url_or_path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: Body = None,
        authority: str | None = None,
    ) -> AsyncIterator[H3StreamResponse]:
        """Like :meth:`request`, but yield once the response headers arrived; read the body
        with ``await resp.receive()`` (``b""`` at the end). Leaving early cancels the stream.
        Raises :class:`H3StreamReset` if the server reset the stream before responding."""
        head = self._request_headers(method, url_or_path, headers, body, authority)
        async with self._exchange(head, body, end_stream=True, after_goaway=False) as resp:
            if resp.status is None and resp.reset_code is not None:
                raise H3StreamReset(resp.stream_id, resp.reset_code)
            yield resp

    @asynccontextmanager
    async def stream_raw(self, headers: Sequence[tuple[bytes, bytes]], *, body: Body = None) -> AsyncIterator[H3StreamResponse]:
        """Send exactly ``headers`` (e.g. a CONNECT: ``:method``, ``:authority`` only) and
        stream ``body`` (an async iterable keeps the request side open while it runs);
        yield once the response headers arrived, like :meth:`stream_request`."""
        async with self._exchange(list(headers), body, end_stream=True, after_goaway=False) as resp:
            if resp.status is None and resp.reset_code is not None:
                raise H3StreamReset(resp.stream_id, resp.reset_code)
            yield resp

    def _request_headers(self, method: str, url_or_path: str, headers: Sequence[tuple[str, str]], body: Body, authority: str | None) -> Headers:
        url_authority, path = None, url_or_path or "/"
        if "://" in url_or_path:
            parts = urlsplit(url_or_path)
            url_authority = parts.netloc or None
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head: Headers = [
            (b":method", method.encode("ascii")),
            (b":scheme", b"https"),
            (b":authority", (authority or url_authority or self._authority).encode("ascii")),
            (b":path", path.encode("utf-8")),
        ]
        head += [(k.strip().lower().encode("latin-1"), v.strip().encode("latin-1")) for k, v in headers]
        if isinstance(body, (bytes, bytearray, memoryview)) and not any(k == b"content-length" for k, _ in head):
            head.append((b"content-length", str(len(body)).encode("ascii")))
        return head

    @staticmethod
    async def _collect(resp: H3StreamResponse) -> H3Response:
        parts: list[bytes] = []
        try:
            while chunk := await resp.receive(1 << 30):
                parts.append(chunk)
        except H3StreamReset:
            pass  # reported through reset_code; any partial body is kept
        return H3Response(status=resp.status, headers=resp.headers, body=b"".join(parts), trailers=resp.trailers, reset_code=resp.reset_code)

    @asynccontextmanager
    async def _exchange(self, headers: Headers, body: Body, *, end_stream: bool, after_goaway: bool) -> AsyncIterator[H3StreamResponse]:
        """Open a stream, send ``headers`` (+ body in a background task), yield once the
        response started; on exit cancel whatever is unfinished and forget the stream."""
        if self._error is not None or self._closing:
            raise self._fresh_error()
        if not after_goaway and self.goaway_received.is_set():
            raise H3ConnectionLost(f"{self._target} sent GOAWAY: no new requests on this connection")
        assert self._nursery is not None
        empty = body is None or (isinstance(body, (bytes, bytearray, memoryview)) and len(body) == 0)
        stream_id = self._quic.get_next_available_stream_id()
        state = StreamState(stream_id)
        self._streams[stream_id] = state
        self._quic.track_stream(stream_id)
        try:
            if (b":method", b"HEAD") in headers:
                self._h3.head_requests.add(stream_id)
            self._h3.send_headers(stream_id, headers, end_stream=end_stream and empty)
            state.send_done = end_stream and empty
            if not state.send_done and not empty:
                state.sender_scope = trio.CancelScope()
                self._nursery.start_soon(self._send_body, state, body, end_stream, state.sender_scope)
            await self._transmit()
            resp = H3StreamResponse(self, state)
            await resp._wait_response_start()
            yield resp
            if state.send_error is not None:  # e.g. the caller's body iterator failed
                raise state.send_error
        finally:
            self._release(state)

    async def _send_body(self, state: StreamState, body: Body, end_stream: bool, scope: trio.CancelScope) -> None:
        """Background task: write ``body`` with backpressure, then the FIN. Never raises;
        a failure (e.g. from the caller's iterator) is stored in ``state.send_error``."""
        with scope:
            if scope.cancel_called:
                return
            try:
                if isinstance(body, (bytes, bytearray, memoryview)):
                    view = memoryview(body)
                    for offset in range(0, len(view), SEND_CHUNK):
                        if not await self.write_body(state, bytes(view[offset : offset + SEND_CHUNK])):
                            return
                elif body is not None:
                    async for chunk in body:
                        if chunk and not await self.write_body(state, bytes(chunk)):
                            return
                if end_stream and state.may_send and self._error is None:
                    self._h3.send_data(state.stream_id, b"", end_stream=True)
                    state.send_done = True
                    await self._transmit()
            except Exception as exc:  # noqa: BLE001 - handed to the request's task
                state.send_error = exc
                if self._error is None:
                    self._quic.abort_stream(state.stream_id, H3_REQUEST_CANCELLED, stop_receiving=True, reset_sending=True)
                    self._wake_driver()
                state.notify()

    def _release(self, state: StreamState) -> None:
        """Forget a stream; cancel its body task and abort unfinished directions."""
        if state.sender_scope is not None:
            state.sender_scope.cancel()
        self._forget_stream(state)


