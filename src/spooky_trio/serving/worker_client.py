"""Talking to a worker's private control API from the supervisor (serving/workers.py): one
HTTP/1.1 exchange with a deadline and a bound on the answer, and the answer of each worker."""

from __future__ import annotations

import json

import attrs
import h11
import trio

#: largest answer read from a worker (metrics text, runtime JSON)
MAX_ANSWER_BYTES = 32 * 1024 * 1024


class WorkerUnreachable(Exception):
    """A worker could not be asked (connection, deadline, protocol, answer too large)."""


async def fetch(port: int, method: str, target: str, token: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with a worker's private control API: (status, body)."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                headers = [("host", "127.0.0.1"), ("authorization", f"Bearer {token}"), ("connection", "close"),
                           ("content-length", str(len(body)))]
                out = conn.send(h11.Request(method=method, target=target, headers=headers))
                if body:
                    out += conn.send(h11.Data(data=body))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                status, answer = 0, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        answer += event.data
                        if len(answer) > MAX_ANSWER_BYTES:
                            raise WorkerUnreachable("answer too large")
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        return status, bytes(answer)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise WorkerUnreachable(f"{type(exc).__name__}: {exc}") from exc


@attrs.define(eq=False)
class WorkerAnswer:
    """One worker's answer to :meth:`Supervisor.each_worker`: ``status`` and ``body``, or
    ``error`` when it could not be asked."""

    worker: int
    pid: int | None
    status: int | None = None
    body: bytes | None = None
    error: str | None = None

    def document(self) -> object:
        """The body as JSON, its text when it is not JSON, None without a body."""
        if self.body is None:
            return None
        try:
            doc: object = json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")
        return doc
