"""Filters the plugin tests load by import path (``object: "tests.plugins.samples:NAME"``):
each one exercises one part of the contract (docs/plugins.md)."""

from __future__ import annotations

import json
import time

import trio

from spooky_trio.plugin import PluginConfigError, Request, Response, ResponseHead, require_api

#: what the filters below saw, by the ``tag`` of their config (tests read and clear it)
JOURNAL: list[str] = []


def _tag(config: dict[str, object], default: str) -> str:
    tag = config.get("tag", default)
    if not isinstance(tag, str):
        raise PluginConfigError("must be a string", "tag")
    return tag


class Stamp:
    """Adds ``x-stamp: <tag>`` to the request and to the response, journals both hooks."""

    def __init__(self, config: dict[str, object]) -> None:
        self.tag = _tag(config, "stamp")

    async def on_request(self, request: Request) -> Response | None:
        JOURNAL.append(f"request:{self.tag}")
        request.headers.add("x-stamp", self.tag)
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        JOURNAL.append(f"response:{self.tag}")
        response.headers.add("x-stamp", self.tag)


class Answer:
    """Answers ``/answer...`` itself: ``status`` (config), a text body, its own reason."""

    def __init__(self, config: dict[str, object]) -> None:
        status = config.get("status", 403)
        if not isinstance(status, int):
            raise PluginConfigError("must be an HTTP status", "status")
        self.status = status

    async def on_request(self, request: Request) -> Response | None:
        if request.path.startswith("/answer"):
            return Response.text(self.status, f"answered by a filter for {request.path}", {"x-answered": "yes"}, reason="denied")
        return None


class Rewrite:
    """Moves ``/old/...`` to ``/new/...``, sets a query, removes ``x-drop``, sets the status
    of every ``/status/404`` answer to 410."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        if request.path.startswith("/old/"):
            request.path = "/new/" + request.path[len("/old/"):]
            request.query = "rewritten=1"
        request.headers.remove("x-drop")
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        if response.status == 404:
            response.status = 410
        response.headers.remove("server")


class Context:
    """Sends what the view says of the request to the backend, as JSON in ``x-context``."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        seen = {
            "method": request.method, "authority": request.authority, "path": request.path, "query": request.query,
            "client": list(request.client_address), "protocol": request.protocol, "pool": request.pool,
            "route": [request.route.host, request.route.path_prefix, request.route.method],
            "sni": request.tls.server_name, "subject": request.tls.client_cert_subject,
            "claims": dict(request.claims), "early_data": request.early_data, "body": request.body is not None,
        }
        request.headers.set("x-context", json.dumps(seen, separators=(",", ":")))
        request.state["seen"] = True
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        response.headers.set("x-state", "kept" if request.state.get("seen") else "lost")


class Raise:
    """Raises on ``/boom`` (request hook) and on ``/boom-response`` (response hook)."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        if request.path.endswith("/boom"):
            raise RuntimeError("the plugin broke")
        if request.path.endswith("/exit"):
            raise SystemExit(3)
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        if request.path.endswith("/boom-response"):
            raise KeyError("the response hook broke")


class Hang:
    """Waits forever on ``/hang``; blocks the event loop ``block_ms`` on ``/block``."""

    def __init__(self, config: dict[str, object]) -> None:
        block = config.get("block_ms", 300)
        assert isinstance(block, int)
        self.block = block / 1000

    async def on_request(self, request: Request) -> Response | None:
        if request.path.endswith("/hang"):
            await trio.sleep_forever()
        if request.path.endswith("/block"):
            time.sleep(self.block)  # noqa: ASYNC251 - blocking on purpose: what the proxy must survive
        return None


class Garbage:
    """Returns something no hook may return on ``/garbage``."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        if request.path.endswith("/garbage"):
            return 42  # type: ignore[return-value]
        return None


class Picky:
    """Refuses any config without ``header`` (a header name)."""

    def __init__(self, config: dict[str, object]) -> None:
        header = config.get("header")
        if not isinstance(header, str) or not header:
            raise PluginConfigError("is required: the header to read", "header")
        self.header = header

    async def on_request(self, request: Request) -> Response | None:
        return None


def needs_api_9(config: dict[str, object]) -> object:
    require_api(9)
    return Stamp(config)


def not_a_filter(config: dict[str, object]) -> object:
    return object()


class Ticker:
    """A background task that counts ticks into :data:`TICKS` (by tag) every 10 ms; its
    request hook sends the count upstream as ``x-ticks``."""

    def __init__(self, config: dict[str, object]) -> None:
        self.tag = _tag(config, "ticker")
        self.fail_first = bool(config.get("fail_first", False))

    async def background(self) -> None:
        TICKS.setdefault(self.tag, 0)
        RUNNING.add(self.tag)
        try:
            if self.fail_first and self.tag not in FAILED:
                FAILED.add(self.tag)
                raise RuntimeError("first run fails")
            while True:
                TICKS[self.tag] += 1
                await trio.sleep(0.01)
        finally:
            RUNNING.discard(self.tag)

    async def on_request(self, request: Request) -> Response | None:
        request.headers.set("x-ticks", str(TICKS.get(self.tag, 0)))
        return None


TICKS: dict[str, int] = {}
RUNNING: set[str] = set()
FAILED: set[str] = set()


class Slow:
    """Holds a request in its request hook until :data:`RELEASE` is set (``/slow``); tags
    the request with the generation's config ``tag``."""

    def __init__(self, config: dict[str, object]) -> None:
        self.tag = _tag(config, "slow")

    async def on_request(self, request: Request) -> Response | None:
        request.headers.set("x-plugin-tag", self.tag)
        if request.path.endswith("/slow"):
            JOURNAL.append(f"waiting:{self.tag}")
            await RELEASE.wait()
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        response.headers.set("x-plugin-tag", self.tag)


class _Release:
    """A trio.Event made on first use (each test's trio run has its own)."""

    def __init__(self) -> None:
        self.event: trio.Event | None = None

    def reset(self) -> None:
        self.event = trio.Event()

    async def wait(self) -> None:
        assert self.event is not None
        await self.event.wait()

    def set(self) -> None:
        assert self.event is not None
        self.event.set()


RELEASE = _Release()


class Body:
    """Reads the body (``request_body_limit`` from config) and replaces it with its upper case."""

    def __init__(self, config: dict[str, object]) -> None:
        limit = config.get("limit", 1024)
        assert isinstance(limit, int)
        self.request_body_limit = limit

    async def on_request(self, request: Request) -> Response | None:
        assert request.body is not None
        request.headers.set("x-body-seen", str(len(request.body)))
        request.set_body(request.body.upper())
        return None


class Noop:
    """Does nothing (the bench's no-op plugin has its own copy)."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        return None
