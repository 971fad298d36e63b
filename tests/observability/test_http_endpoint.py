"""The metrics and control endpoints' HTTP/1.1 server (observability/http_server.py) on an
in-memory stream: what h11 frames by the method as sent must match what we send."""

from __future__ import annotations

import trio

from spooky_trio.config.schema_runtime import MetricsConfig
from spooky_trio.observability.metrics import Metrics
from spooky_trio.serving.control import metrics_endpoint


class _Stream:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.out = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        piece, self._data = self._data, b""
        return piece

    async def send_all(self, data: bytes) -> None:
        self.out += data


def test_a_method_is_taken_as_sent_so_the_response_is_framed_for_it() -> None:
    # "HEaD" is not HEAD (methods are case-sensitive): it gets a whole answer with its body;
    # upper-cased, its body was left out, h11 refused the short message and nothing was sent
    stream = _Stream(b"HEaD /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    endpoint = metrics_endpoint(MetricsConfig(enabled=True, port=0), Metrics())

    async def main() -> None:
        await endpoint._serve_requests(stream)  # type: ignore[arg-type]

    trio.run(main)
    head, _, body = bytes(stream.out).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 "), bytes(stream.out)[:200]
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    assert length > 0 and len(body) == length


def test_head_and_get_still_answer() -> None:
    stream = _Stream(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    endpoint = metrics_endpoint(MetricsConfig(enabled=True, port=0), Metrics())

    async def main() -> None:
        await endpoint._serve_requests(stream)  # type: ignore[arg-type]

    trio.run(main)
    out = bytes(stream.out)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 200 ") == 2
    assert out.rstrip().endswith(b"# EOF") or b"spooky_" in out.rsplit(b"HTTP/1.1 200 ", 1)[1]
