"""The auth layer's outbound HTTP calls (JWKS, OIDC discovery and introspection, external
auth services): httpx's async client, which runs on Trio through anyio (no threads, no
blocking client), with a deadline and a body bound on every call.

TLS is verified against the system roots plus an optional ``ca_file`` (extensions.md
section 4); redirects are never followed (an auth service's 3xx is an answer); proxies from
the environment are ignored (``trust_env=False``: what the proxy talks to is what its config
says); ``accept-encoding: identity`` is sent, so a body is never decompressed past its bound.

httpx is imported when the first client is made: a config without outbound auth does not
carry its ~8 MB (measured as peak RSS in the bench) in every process.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence

from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    import httpx

#: what one client may hold open (connections beyond wait for a free one, within the deadline)
MAX_CONNECTIONS = 256


class OutboundError(Exception):
    """A call failed: transport, TLS, or a body over its bound. ``reason`` is a short label
    (``connect``, ``tls``, ``too_large``, ``protocol``); the message is safe to log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OutboundTimeout(OutboundError):
    """Nothing complete within the call's deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__("timeout", f"no complete answer within {seconds * 1000:.0f} ms")


@attrs.frozen
class OutboundResponse:
    """A complete answer: lowercase header names, the body (within its bound)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: seconds the call took
    elapsed: float

    def header(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (lowercase), or None."""
        found = None
        for header, value in self.headers:
            if header == name:
                found = value
        return found


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification against the system roots, plus ``ca_file`` when given (read now)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


class OutboundClient:
    """One connection pool with one TLS policy; shared by every generation that names the
    same CA content, closed by its owner (:class:`~spooky_trio.auth.store.AuthStore`)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        import httpx  # (module docstring)

        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=64, keepalive_expiry=30)
        self._client = httpx.AsyncClient(verify=context, follow_redirects=False, trust_env=False, limits=limits, timeout=None)

    async def request(
        self, method: str, url: str, *, headers: Sequence[tuple[bytes, bytes]] = (), content: bytes | None = None,
        timeout: float, max_body: int,
    ) -> OutboundResponse:
        """``method url`` with exactly ``headers`` (plus httpx's Host and framing); the whole
        exchange (connect, TLS, head, body) within ``timeout`` seconds, the body within
        ``max_body`` bytes. Raises :class:`OutboundTimeout` or :class:`OutboundError`."""
        import httpx  # already loaded by __init__: a dict lookup

        started = time.monotonic()
        outgoing = [(n, v) for n, v in headers if n != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
        with trio.move_on_after(timeout) as scope:
            try:
                return await self._exchange(method, url, outgoing, content, max_body, started)
            except httpx.HTTPError as exc:
                raise OutboundError(_reason(exc), f"{type(exc).__name__}: {exc}") from None
            except ssl.SSLError as exc:
                raise OutboundError("tls", f"TLS: {exc}") from None
            except OSError as exc:
                raise OutboundError("connect", f"{type(exc).__name__}: {exc}") from None
            except OutboundError:
                raise
            except Exception as exc:  # noqa: BLE001 - a misbehaving peer must never fail the request path
                raise OutboundError("protocol", f"{type(exc).__name__}: {exc}") from None
        assert scope.cancelled_caught
        raise OutboundTimeout(timeout)

    async def _exchange(self, method: str, url: str, headers: list[tuple[bytes, bytes]], content: bytes | None, max_body: int,
                        started: float) -> OutboundResponse:
        request = self._client.build_request(method, url, headers=headers, content=content)
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                raise OutboundError("too_large", f"the answer declares {declared} bytes (limit {max_body})")
            parts: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > max_body:
                    raise OutboundError("too_large", f"the answer is over {max_body} bytes")
                parts.append(chunk)
        finally:
            await response.aclose()
        raw = [(name.lower(), value) for name, value in response.headers.raw]
        return OutboundResponse(response.status_code, raw, b"".join(parts), time.monotonic() - started)

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(exc: httpx.HTTPError) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__ or exc.__context__
        return "tls" if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "CERTIFICATE" in str(exc) else "connect"
    if isinstance(exc, httpx.TransportError):
        return "transport"
    return "protocol"
