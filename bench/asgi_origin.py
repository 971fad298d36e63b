"""Fallback HTTP/2 TLS origin (hypercorn) when nginx is not installed; same URL space as
the nginx origin: ``/`` tiny text, ``/bytes/N`` N bytes, ``POST /upload`` reads the body."""

from __future__ import annotations

TINY = b"hello from the bench origin\n"
_CHUNK = b"x" * 65536


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    more = True
    while more:  # read (and drop) any request body
        message = await receive()
        more = message.get("more_body", False)
    n = -1
    if path.startswith("/bytes/"):
        try:
            n = int(path[len("/bytes/"):])
        except ValueError:
            n = -1
    if n < 0:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(TINY)).encode())]})
        await send({"type": "http.response.body", "body": TINY})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(n).encode()), (b"content-type", b"application/octet-stream")]})
    if n == 0:
        await send({"type": "http.response.body", "body": b""})
    while n > 0:
        chunk = _CHUNK[: min(n, len(_CHUNK))]
        n -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": n > 0})
