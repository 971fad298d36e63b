"""``request-id``: every request gets an id (``header``, default ``x-request-id``) that the
backend receives and the client gets back in the answer. A client's own id is kept when
``trust_client`` (default true) and it looks like one (8-128 of ``A-Za-z0-9._-``);
otherwise, or without one, a random one (UUID4, hex) replaces it."""

from __future__ import annotations

import re
import uuid

from spooky_trio.plugin import Request, Response, ResponseHead
from spooky_example_filters import _settings

_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")


class RequestIdFilter:
    def __init__(self, config: dict[str, object]) -> None:
        _settings.only(config, {"header", "trust_client"})
        header = _settings.text(config, "header", "x-request-id")
        assert header is not None
        self.header = header
        self.trust_client = _settings.flag(config, "trust_client", True)

    async def on_request(self, request: Request) -> Response | None:
        given = request.headers.get(self.header)
        if given is None or not self.trust_client or not _ID.fullmatch(given):
            given = uuid.uuid4().hex
            request.headers.set(self.header, given)
        request.state["request_id"] = given
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        given = request.state.get("request_id")
        if isinstance(given, str):
            response.headers.set(self.header, given)
