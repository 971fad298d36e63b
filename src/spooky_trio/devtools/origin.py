"""A small HTTP/1.1 origin on h11 + Trio, for `make run` and benchmarks.

``GET /`` answers with a short greeting naming the method, path and Host it saw;
``/bytes/N`` sends N bytes; any request body is read and its length reported.
Keep-alive is honoured so proxies can pool connections to it.
"""

from __future__ import annotations

import argparse
import logging

import h11
import trio

log = logging.getLogger("spooky.demo.origin")
MAX_BYTES = 1 << 30


def _respond(request: h11.Request, body_len: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    path = request.target.decode("latin-1")
    if path.startswith("/bytes/"):
        try:
            n = min(int(path[len("/bytes/"):].split("?")[0]), MAX_BYTES)
        except ValueError:
            n = -1
        if n >= 0:
            return 200, [(b"content-type", b"application/octet-stream")], b"x" * n
    host = dict(request.headers).get(b"host", b"").decode("latin-1")
    text = (
        f"hello from the spooky-trio demo origin\n"
        f"method={request.method.decode()} path={path} host={host} body_bytes={body_len}\n"
    )
    return 200, [(b"content-type", b"text/plain; charset=utf-8")], text.encode()


async def handle_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = None
            body_len = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body_len += len(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if request is None:
                return
            status, headers, body = _respond(request, body_len)
            headers.append((b"content-length", str(len(body)).encode()))
            out = conn.send(h11.Response(status_code=status, headers=headers))
            out += conn.send(h11.Data(data=body)) if body and request.method != b"HEAD" else b""
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def serve_origin(host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started(port)`` once bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await trio.serve_listeners(handle_connection, listeners)


def main() -> None:
    parser = argparse.ArgumentParser(description="spooky-trio demo origin (HTTP/1.1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    try:
        trio.run(serve_origin, args.host, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
