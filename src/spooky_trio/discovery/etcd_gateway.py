"""etcd v3 through its HTTP/JSON gateway (``/v3/kv/range``, ``/v3/watch``,
``/v3/auth/authenticate``), with httpx's async client on Trio.

Why the gateway and httpx rather than an etcd client library: the maintained Python etcd v3
clients speak gRPC on asyncio (or on threads); the gateway is etcd's documented JSON API on
every member (etcd >= 3.4), and httpx, already a dependency, runs on Trio through anyio with
TLS verification, client certificates and streamed bodies. Keys and values are base64 in
JSON, 64-bit integers are strings, a watch is one long POST whose answer is a stream of
JSON objects, one per line.

Every call has a deadline: a range read or an authentication within ``timeout``, a watch's
first message (its creation) within ``timeout``; the stream after that is bounded by the
caller. Every buffer has a bound: :data:`MAX_RANGE_BYTES` for a range answer,
:data:`MAX_MESSAGE_BYTES` for one watch message, :data:`MAX_KEYS` keys under a prefix.
Failures are :class:`~spooky_trio.discovery.source.DiscoveryError`; their messages never
hold the password or the token.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from spooky_trio.discovery.source import DiscoveryError

if TYPE_CHECKING:
    import httpx

#: the most keys a prefix may hold (a range asks for one more to notice)
MAX_KEYS = 10000
#: the largest range answer read
MAX_RANGE_BYTES = 16 * 1024 * 1024
#: the largest single watch message (one batch of events)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` of every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"  # every key
    end[-1] += 1
    return bytes(end)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise DiscoveryError("invalid", "the gateway sent a key or value that is not base64") from None


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _dict(value: object) -> dict[str, object]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


@attrs.frozen
class KeyValue:
    """One key under the prefix; ``value`` is empty for a deletion; ``mod_revision``: the
    revision of its last change (of the deletion, for a deletion)."""

    key: bytes
    value: bytes
    deleted: bool = False
    mod_revision: int = 0


@attrs.frozen
class WatchMessage:
    """One message of a watch stream: its events, the revision it reports, and whether
    etcd cancelled the watch (``compact_revision``: the history it needed was compacted)."""

    revision: int
    events: tuple[KeyValue, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    #: why etcd cancelled the watch, when it says (a permission refused, ...)
    cancel_reason: str = ""


class EtcdGateway:
    """One source's HTTP client (one connection pool, one TLS policy, the auth token)."""

    def __init__(self, *, timeout: float, context: ssl.SSLContext | None, username: str | None, password: str | None) -> None:
        import httpx  # imported when the first etcd source starts (a config without one does not load it)

        self.timeout = timeout
        self._username = username
        self._password = password
        self._token: str | None = None
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30)
        self._client = httpx.AsyncClient(verify=context if context is not None else True, trust_env=False,
                                         follow_redirects=False, limits=limits, timeout=None)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()

    # -- calls --

    async def range(self, endpoint: str, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix``: (the store's revision, the keys in key order)."""
        body: dict[str, object] = {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix)), "limit": str(MAX_KEYS + 1)}
        document = await self._call(endpoint, "/v3/kv/range", body, MAX_RANGE_BYTES)
        kvs = document.get("kvs")
        items = [_dict(kv) for kv in kvs] if isinstance(kvs, list) else []
        if len(items) > MAX_KEYS:
            raise DiscoveryError("too_large", f"more than {MAX_KEYS} keys under the prefix")
        revision = _int(_dict(document.get("header")).get("revision"))
        return revision, [KeyValue(_unb64(kv.get("key")), _unb64(kv.get("value")), False, _int(kv.get("mod_revision")))
                          for kv in items]

    @asynccontextmanager
    async def watch(self, endpoint: str, prefix: bytes, start_revision: int) -> AsyncIterator[WatchStream]:
        """A watch of ``prefix`` from ``start_revision``, started (its first message, the
        creation, arrived within the deadline: :attr:`WatchStream.first`). Leaving the
        block ends the watch. A transport failure inside the block (reading the stream)
        becomes a DiscoveryError; the block's own exceptions pass unchanged."""
        import httpx

        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix)),
                                   "start_revision": str(start_revision)}}
        try:
            async with contextlib.AsyncExitStack() as stack:
                for attempt in (1, 2):
                    # an expired token (etcd's simple tokens expire after minutes unused) is
                    # refused with 401, or in the stream as a cancelled watch: one new token
                    retry = attempt == 1 and self._username is not None
                    await self._ensure_token(endpoint)
                    response = await stack.enter_async_context(
                        self._client.stream("POST", endpoint + "/v3/watch", json=body, headers=self._headers()))
                    if response.status_code == 401 and retry:
                        self._token = None
                        await response.aclose()
                        continue
                    if response.status_code != 200:
                        await self._refuse(response)
                    stream = WatchStream(response)
                    with trio.move_on_after(self.timeout) as scope:
                        stream.first = await stream.next()
                    if scope.cancelled_caught:
                        raise DiscoveryError("timeout", f"{endpoint} did not start the watch within {self.timeout * 1000:.0f} ms")
                    if stream.first is None:
                        raise DiscoveryError("unreachable", f"{endpoint} closed the watch at once")
                    if retry and stream.first.canceled and "invalid auth token" in stream.first.cancel_reason:
                        self._token = None
                        await response.aclose()
                        continue
                    break
                yield stream
        except (httpx.HTTPError, httpx.StreamError, OSError, trio.BrokenResourceError) as exc:
            raise _mapped(endpoint, exc) from None

    async def _call(self, endpoint: str, path: str, body: dict[str, object], limit: int) -> dict[str, object]:
        """POST ``body`` to ``path``; the JSON answer (a mapping), re-authenticating once
        when the token expired."""
        await self._ensure_token(endpoint)
        for attempt in (1, 2):
            status, document = await self._post(endpoint, path, body, self._headers(), limit)
            if status == 200:
                return document
            if status == 401 and self._username is not None and attempt == 1:
                self._token = None  # expired: one new token, then the call again
                await self._ensure_token(endpoint)
                continue
            raise _status_error(endpoint, status, document)
        raise AssertionError("unreachable")

    async def _ensure_token(self, endpoint: str) -> None:
        if self._username is None or self._token is not None:
            return
        status, document = await self._post(endpoint, "/v3/auth/authenticate",
                                            {"name": self._username, "password": self._password or ""}, {}, 64 * 1024)
        token = document.get("token")
        if status != 200 or not isinstance(token, str) or not token:
            raise DiscoveryError("auth", f"{endpoint} refused the etcd user {self._username!r} (HTTP {status})")
        self._token = token

    def _headers(self) -> dict[str, str]:
        return {"authorization": self._token} if self._token is not None else {}

    async def _post(self, endpoint: str, path: str, body: dict[str, object], headers: dict[str, str],
                    limit: int) -> tuple[int, dict[str, object]]:
        with trio.move_on_after(self.timeout) as scope:
            try:
                async with self._client.stream("POST", endpoint + path, json=body, headers=headers) as response:
                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > limit:
                            raise DiscoveryError("too_large", f"the answer of {endpoint}{path} is over {limit} bytes")
                    status = response.status_code
            except DiscoveryError:
                raise
            except Exception as exc:  # noqa: BLE001 - httpx and anyio errors, mapped to one type
                raise _mapped(endpoint, exc) from None
        if scope.cancelled_caught:
            raise DiscoveryError("timeout", f"{endpoint}{path} did not answer within {self.timeout * 1000:.0f} ms")
        try:
            document = json.loads(content) if content else {}
        except ValueError:
            raise DiscoveryError("invalid", f"{endpoint}{path} answered HTTP {status} without JSON") from None
        return status, _dict(document)

    async def _refuse(self, response: httpx.Response) -> None:
        content = b""
        async for chunk in response.aiter_bytes():
            content += chunk
            if len(content) > 64 * 1024:
                break
        try:
            document = _dict(json.loads(content))
        except ValueError:
            document = {}
        if response.status_code == 401:
            self._token = None
        raise _status_error(str(response.url), response.status_code, document)


class WatchStream:
    """The messages of one watch answer: one JSON object per line, each line bounded."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._buffer = bytearray()
        self._ended = False
        #: the first message (the watch's creation, or its cancellation)
        self.first: WatchMessage | None = None

    async def next(self) -> WatchMessage | None:
        """The next message; None when etcd ended the stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                if line.strip():
                    return _watch_message(line)
                continue
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                raise DiscoveryError("too_large", f"a watch message is over {MAX_MESSAGE_BYTES} bytes")
            if self._ended:
                line, self._buffer = bytes(self._buffer), bytearray()
                return _watch_message(line) if line.strip() else None
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True


def _watch_message(line: bytes) -> WatchMessage:
    try:
        document = _dict(json.loads(line))
    except ValueError:
        raise DiscoveryError("invalid", "the watch stream sent a line that is not JSON") from None
    if "error" in document:
        error = _dict(document["error"])
        raise DiscoveryError("unreachable", f"the watch failed: {error.get('message') or error.get('error') or 'error'}")
    result = _dict(document.get("result"))
    events = []
    raw_events = result.get("events")
    for event in raw_events if isinstance(raw_events, list) else []:
        event = _dict(event)
        kv = _dict(event.get("kv"))
        deleted = event.get("type") in ("DELETE", 1)
        events.append(KeyValue(_unb64(kv.get("key")), b"" if deleted else _unb64(kv.get("value")), deleted,
                               _int(kv.get("mod_revision"))))
    return WatchMessage(
        revision=_int(_dict(result.get("header")).get("revision")),
        events=tuple(events),
        created=result.get("created") is True,
        canceled=result.get("canceled") is True,
        compact_revision=_int(result.get("compact_revision")),
        cancel_reason=str(result.get("cancel_reason") or ""),
    )


#: gRPC codes etcd answers for a missing or refused login: InvalidArgument ("user name is
#: empty": auth is on, no token was sent), PermissionDenied, Unauthenticated
_AUTH_CODES = (3, 7, 16)


def _status_error(where: str, status: int, document: dict[str, object]) -> DiscoveryError:
    message = str(document.get("message") or document.get("error") or "")
    code = _int(document.get("code"))
    auth = status in (401, 403) or (code in _AUTH_CODES and ("user" in message or "auth" in message or "permission" in message))
    reason = "auth" if auth else "unreachable"
    return DiscoveryError(reason, f"{where} answered HTTP {status}{f': {message}' if message else ''}")


def _mapped(endpoint: str, exc: Exception) -> DiscoveryError:
    if isinstance(exc, DiscoveryError):
        return exc
    if isinstance(exc, ssl.SSLError) or "SSL" in str(exc) or "CERTIFICATE" in str(exc):
        return DiscoveryError("unreachable", f"TLS with {endpoint} failed: {exc}")
    return DiscoveryError("unreachable", f"{endpoint}: {type(exc).__name__}: {exc}")
