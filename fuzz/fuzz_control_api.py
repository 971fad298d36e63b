"""Fuzz the control API and metrics endpoint request path: bytes -> h11 -> routing, auth, JSON.

Input: four setup bytes (which endpoint: control API or metrics; whether a bearer token is
configured; whether a certificate reload fails; the read size), then raw bytes a client
sends. They go through ``HttpEndpoint._serve_requests`` (h11 server connection, keep-alive,
request bodies read and ignored) on an in-memory stream into ``ControlApi.handle`` (or the
metrics handler) with a stand-in server, inside ``trio.run``.

Invariants: only ``h11.ProtocolError`` escapes ``_serve_requests`` (``_connection`` logs it
and closes); the handler never raises (``_serve_requests`` would turn that into a 500 and
hide it); the output is a sequence of well-formed HTTP/1.1 responses, one per handled
request, each with a known status, a ``content-length`` equal to its body (no body for
HEAD) and ``cache-control: no-store``; with a token configured, no admin path is answered
200/202/422 unless the request carried ``Authorization: Bearer <token>``; the restart hook
runs only after a 202; JSON bodies parse; output stays bounded (a few KiB per request).
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    import h11
    import trio
    from spooky_trio.config.schema_runtime import ControlApiConfig, MetricsConfig
    from spooky_trio.ingress.identities import IdentityError
    from spooky_trio.serving.control import ControlApi, metrics_endpoint
    from spooky_trio.observability.http_server import HttpRequest, HttpResponse
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.config import load_config_text
    from spooky_trio.core.generation import Generation
    from spooky_trio.core.generations import GenerationSet
    from spooky_trio.serving.reload import Outcome
    from spooky_trio.core.state import StateStore

TOKEN = "s3cret-token"
# 503: /ready while draining (found by the 10-minute campaign: the harness, not the API, was wrong)
KNOWN_STATUSES = {200, 202, 401, 403, 404, 405, 409, 422, 501, 503}
# a response's bound: the bare /metrics page is ~17 KB (every family's HELP and TYPE, more
# with each feature's metrics: it passed 16 KiB when issues 18-23 landed), the rest is small
MAX_RESPONSE_BYTES = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([^\r\n]*)")


_CONFIG_TEXT = """
listen: {tls: {cert: c.pem, key: k.pem}}
upstream:
  app:
    route: {path_prefix: /}
    backends: [{id: b1, address: "http://127.0.0.1:1"}]
"""


class _Activity:
    count = 0


class _Reloads:
    """The reload manager's surface: answers without touching a config file."""

    def describe(self) -> dict[str, object]:
        return {"generation": 3, "sha256": "0" * 64, "source": "startup", "canary": None, "history": []}

    async def reload_file(self, trigger: str) -> Outcome:
        return Outcome(409, {"result": "unavailable", "errors": [{"message": "no config file"}]})

    async def apply(self, body: bytes, *, persist: bool, canary_percent: float | None) -> Outcome:
        if not body.strip():
            return Outcome(400, {"result": "invalid", "errors": [{"message": "empty document"}]})
        return Outcome(422, {"result": "invalid", "errors": [{"path": "listen", "line": 1, "column": 1, "message": "x"}]})

    async def validate(self, body: bytes) -> Outcome:
        return Outcome(200, {"result": "valid", "diff": {}})

    async def rollback(self, *, persist: bool) -> Outcome:
        return Outcome(409, {"result": "unavailable", "errors": [{"message": "nothing to roll back to"}]})

    async def promote(self, *, persist: bool) -> Outcome:
        return Outcome(409, {"result": "unavailable", "errors": [{"message": "no canary"}]})


class _Server:
    """What ``ControlApi`` reads and calls on the real ``Server``."""

    def __init__(self, reload_fails: bool, ready: bool) -> None:
        self.reload_fails = reload_fails
        self.ready = ready
        self.draining = not ready
        self.worker_index = None
        self.config = load_config_text(_CONFIG_TEXT)
        self.state = StateStore()
        self.generation = Generation.build(self.config, number=3, state=self.state)
        self.generations = GenerationSet(self.generation)
        self.reloads = _Reloads()
        self.listeners: list[object] = []
        self.bootstrap_listeners: list[object] = []
        self.activity = _Activity()
        self.restarts = 0

    def reload_certs(self) -> list[dict[str, str]]:
        if self.reload_fails:
            raise IdentityError("listen.tls.cert: cannot read /x.pem")
        return [{"listener": "127.0.0.1:9889", "serial": "01"}]

    def request_restart(self) -> None:
        self.restarts += 1


class _Stream:
    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = data
        self._chunk = chunk
        self.out = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        piece, self._data = self._data[: self._chunk], self._data[self._chunk :]
        return piece

    async def send_all(self, data: bytes) -> None:
        self.out += data


def _parse_responses(out: bytes, requests: list[HttpRequest]) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    responses = []
    rest = out
    for request in requests:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, out
        status_line, *lines = head.split(b"\r\n")
        m = _STATUS_LINE.fullmatch(status_line)
        assert m, status_line
        fields: dict[bytes, bytes] = {}
        for line in lines:
            f = _FIELD.fullmatch(line)
            assert f, line
            fields[f.group(1).lower()] = f.group(2)
        length = int(fields[b"content-length"])
        body_len = 0 if request.method == "HEAD" else length
        body, rest = rest[:body_len], rest[body_len:]
        assert len(body) == body_len
        responses.append((int(m.group(1)), fields, body))
    assert rest == b"", rest[:200]
    return responses


def _authorized(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token.strip() == TOKEN


def test_one_input(data: bytes) -> None:
    r = Reader(data[:4])
    use_metrics = r.int_in_range(0, 3) == 0
    with_token = r.boolean()
    server = _Server(reload_fails=r.boolean(), ready=r.boolean())
    chunk = r.int_in_range(1, 255) if r.remaining() else 4096
    raw = data[4:]

    control_config = ControlApiConfig(enabled=True, auth_token=TOKEN if with_token else None)
    if use_metrics:
        endpoint = metrics_endpoint(MetricsConfig(enabled=True, port=0), Metrics())
    else:
        endpoint = ControlApi(control_config, server).endpoint()
    inner = endpoint.handler
    handled: list[tuple[HttpRequest, HttpResponse]] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        response = await inner(request)  # an exception here is a finding: do not swallow it
        assert response.status in KNOWN_STATUSES, response
        handled.append((request, response))
        return response

    endpoint.handler = handler
    stream = _Stream(raw, chunk)

    async def main() -> None:
        try:
            await endpoint._serve_requests(stream)  # type: ignore[arg-type]
        except h11.ProtocolError:
            pass

    restarts_before_answer = []
    original_restart = server.request_restart

    def restart() -> None:
        restarts_before_answer.append(bytes(stream.out).count(b"HTTP/1.1 202 "))
        original_restart()

    server.request_restart = restart  # type: ignore[method-assign]
    trio.run(main)

    requests = [request for request, _ in handled]
    responses = _parse_responses(bytes(stream.out), requests)
    assert len(stream.out) <= MAX_RESPONSE_BYTES * max(1, len(handled))
    admin = (control_config.runtime_path, control_config.restart_path, control_config.reload_path,
             control_config.reload_certs_path)
    for (request, _), (status, fields, body) in zip(handled, responses):
        assert status in KNOWN_STATUSES
        assert fields.get(b"cache-control") == b"no-store"
        assert not request.path.count("?")
        if not use_metrics and with_token and (request.path.startswith("/admin") or request.path in admin):
            if status in (200, 202, 422):
                assert _authorized(request), request
        if fields.get(b"content-type", b"").startswith(b"application/json") and request.method != "HEAD":
            json.loads(body)
    # the restart hook runs once per 202, each time after that 202 was written
    assert len(restarts_before_answer) == sum(1 for s, _, _ in responses if s == 202)
    assert all(n >= i + 1 for i, n in enumerate(restarts_before_answer)), restarts_before_answer


if __name__ == "__main__":
    run(test_one_input)
