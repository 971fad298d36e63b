"""Types and helpers shared by the HTTP/1.1 and HTTP/2 upstream engines.

* :class:`BackendTarget` names one backend and is the pool key.
* :class:`UpstreamResponse` is what :meth:`UpstreamPool.exchange` yields.
* :class:`ExchangeControl` and :func:`pump_body` implement the request-body pump that runs
  concurrently with the response inside one exchange; :class:`PumpNursery` (and its
  generator form :func:`exchange_scope`) is the nursery it runs in.
"""

from __future__ import annotations

import abc
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import trio

from spooky_trio.http.messages import Body, Headers, RequestBodyError
from spooky_trio.upstream.errors import UpstreamError

#: bytes read from a backend socket per receive call (h1) and the unit of body chunking
READ_CHUNK = 64 * 1024


def _check_scheme(instance: BackendTarget, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("http", "https"):
        raise ValueError(f"BackendTarget.scheme must be 'http' or 'https', not {value!r}")


#: the protocols each scheme can speak (HTTP/3, and Alt-Svc discovery of it, need TLS)
PROTOCOLS = {"http": ("h1", "h2"), "https": ("h1", "h2", "h3", "alt-svc")}


def _scheme_protocol(instance: BackendTarget) -> str:
    return "h1" if instance.scheme == "http" else "h2"


def _check_protocol(instance: BackendTarget, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PROTOCOLS.get(instance.scheme, ()):
        raise ValueError(f"BackendTarget.protocol {value!r} is not one of {PROTOCOLS.get(instance.scheme)} for {instance.scheme}")


@attrs.frozen
class BackendTarget:
    """One backend: the pool key (hashable; the SSL context hashes by identity).

    ``scheme`` "http" is cleartext, "https" TLS and requires ``ssl_context``. ``protocol``
    is what the pool speaks: "h1" (h11), "h2" (h2; cleartext prior knowledge on http),
    "h3" (QUIC to ``host:port`` over UDP, trusting what ``ssl_context`` trusts) or "alt-svc"
    (HTTP/2 until the backend advertises HTTP/3, see ``upstream/alt_svc.py``); it defaults
    to the scheme's (h1 for http, h2 for https). ``host`` is a hostname or an IP literal (IPv6 without
    brackets). ``server_name`` is the SNI to send (None: send none). Whenever the context
    verifies certificates, the certificate identity is checked against ``host``.
    ``connect_host`` (an IP address, from DNS refresh) is dialled instead of resolving
    ``host``; TLS identity and SNI still use ``host``/``server_name``. It is part of the
    key, so a changed address means new connections while old ones finish their work.
    """

    scheme: str = attrs.field(validator=_check_scheme)
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None
    connect_host: str | None = None
    protocol: str = attrs.field(default=attrs.Factory(_scheme_protocol, takes_self=True), validator=_check_protocol)

    def __attrs_post_init__(self) -> None:
        if self.scheme == "https" and self.ssl_context is None:
            raise ValueError("an https BackendTarget needs an ssl_context")

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{shown}:{self.port}"


class UpstreamResponse(abc.ABC):
    """A backend's response as :meth:`UpstreamPool.exchange` yields it.

    ``headers`` have lowercase names and no pseudo-headers; hop-by-hop headers are kept (the
    pipeline strips them). ``http_version`` is "1.1", "2" or "3". ``trailers`` is valid once
    :meth:`receive` returned b"". The object is only usable inside the exchange block.
    """

    status: int
    headers: Headers
    http_version: str
    trailers: Headers

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Return the next non-empty body chunk, or b"" at the end of the body.

        Reads from the backend only when called (backpressure). Raises
        :class:`~spooky_trio.upstream.errors.UpstreamProtocolError` if the backend aborts
        mid-body; calling again after b"" returns b"" again.
        """

    def receive_nowait(self) -> bytes | None:
        """What :meth:`receive` would return if that needs no I/O; None when it would wait.

        Lets the caller skip its idle timer for data already buffered (HTTP/1.1: h11 holds
        a small response's whole body after the read that brought its head)."""
        return None

    @property
    @abc.abstractmethod
    def complete(self) -> bool:
        """True once the whole body (and trailers) were received."""

    @property
    @abc.abstractmethod
    def buffered_bytes(self) -> int:
        """Response body bytes received from the backend but not yet returned by receive().

        Diagnostic: it stays bounded (one read chunk for HTTP/1.1, the stream flow-control
        window for HTTP/2) however slowly the consumer reads.
        """


class ExchangeControl:
    """State shared by an exchange's owner and its request-body pump.

    ``head_scope`` bounds the wait for response headers: its deadline is infinite until the
    request has been sent completely (or the pump gave up), then ``response_timeout`` from
    that moment. ``client_error`` records an exception raised by the request body; recording
    it cancels ``abort_scope`` (the exchange's nursery) so the owner stops and re-raises it.
    """

    def __init__(self, abort_scope: trio.CancelScope, response_timeout: float) -> None:
        self.abort_scope = abort_scope
        self.response_timeout = response_timeout
        self.head_scope = trio.CancelScope()
        self.client_error: BaseException | None = None
        self.request_finished = False
        self.request_complete = False

    def restart(self) -> None:
        """Reset the request state for a retry of a bodiless request on another connection."""
        self.head_scope = trio.CancelScope()
        self.request_finished = False
        self.request_complete = False

    def request_done(self, *, complete: bool) -> None:
        """The pump stopped; ``complete`` when the whole request went out. Starts the head timer."""
        if self.request_finished:
            return
        self.request_finished = True
        self.request_complete = complete
        self.head_scope.deadline = min(self.head_scope.deadline, trio.current_time() + self.response_timeout)

    def fail_client(self, exc: BaseException) -> None:
        """The request body raised ``exc``: abort the whole exchange and re-raise it later."""
        if self.client_error is None:
            self.client_error = exc
        self.abort_scope.cancel()


def check_body_length(sent: int, declared: int | None, *, final: bool) -> None:
    """Raise :class:`RequestBodyError` when ``sent`` bytes disagree with ``declared``."""
    if declared is None:
        return
    if sent > declared or (final and sent != declared):
        raise RequestBodyError(f"request body of {sent}{'' if final else '+'} bytes disagrees with content-length {declared}")


async def pump_body(
    body: Body,
    declared: int | None,
    control: ExchangeControl,
    send_chunk: Callable[[bytes], Awaitable[None]],
    send_end: Callable[[], Awaitable[None]],
) -> None:
    """Copy ``body`` to the backend with ``send_chunk`` then ``send_end``; never raises.

    Contract: an exception from ``body`` (or a length mismatch with ``declared``) goes to
    :meth:`ExchangeControl.fail_client`. An :class:`UpstreamError` from the send functions
    means the backend side is gone or refused the rest of the body: the pump stops quietly
    and the response side reports what happened (a server may answer before reading all of
    the body). Cancellation propagates. In every case :meth:`ExchangeControl.request_done`
    is called so that the response-header timer starts.
    """
    complete = False
    try:
        iterator = aiter(body)
        async with contextlib.AsyncExitStack() as stack:
            if hasattr(iterator, "aclose"):
                stack.push_async_callback(iterator.aclose)
            sent = 0
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                if not chunk:
                    continue
                sent += len(chunk)
                check_body_length(sent, declared, final=False)
                await send_chunk(chunk)
            check_body_length(sent, declared, final=True)
        await send_end()
        complete = True
    except UpstreamError:
        pass
    except Exception as exc:  # the client's body failed: the exchange re-raises it unchanged
        control.fail_client(exc)
    finally:
        control.request_done(complete=complete)


class PumpNursery:
    """The nursery an exchange's request-body pump runs in, entered and left explicitly.

    ``await open()`` enters the nursery and returns ``(nursery, control)``; the caller's
    exchange then runs inside it. ``await close()`` cancels the pump, waits for it, and
    raises the request body's exception if the pump recorded one
    (:meth:`ExchangeControl.fail_client`); otherwise it returns and whatever the exchange
    raised should propagate as itself: that exception never enters the nursery, so it is
    never wrapped in an ExceptionGroup. Class-based exchanges (the HTTP/1.1 pool exchange)
    use it directly, :func:`exchange_scope` wraps it.
    """

    __slots__ = ("_manager", "_response_timeout", "nursery", "control")

    def __init__(self, response_timeout: float) -> None:
        self._manager = trio.open_nursery()
        self._response_timeout = response_timeout

    async def open(self) -> tuple[trio.Nursery, ExchangeControl]:
        nursery = self.nursery = await self._manager.__aenter__()
        control = self.control = ExchangeControl(nursery.cancel_scope, self._response_timeout)
        return nursery, control

    def cancel(self) -> None:
        """Stop the pump at its next checkpoint (:meth:`close` must still follow)."""
        self.nursery.cancel_scope.cancel()

    async def close(self) -> None:
        self.nursery.cancel_scope.cancel()
        await self._manager.__aexit__(None, None, None)
        if self.control.client_error is not None:
            raise self.control.client_error


@contextlib.asynccontextmanager
async def exchange_scope(response_timeout: float, *, pump: bool = True) -> AsyncIterator[tuple[trio.Nursery | None, ExchangeControl]]:
    """:class:`PumpNursery` as a context manager, for exchanges written as generators.

    Yields ``(nursery, control)``. On exit the nursery is cancelled (stopping the pump). If
    the pump recorded a client body failure that exception is raised; otherwise whatever the
    block raised propagates as itself (never wrapped in an ExceptionGroup).

    ``pump=False`` (a bodiless request) yields ``(None, control)``: no nursery to open and
    cancel, which is a measurable share of a tiny proxied request's CPU.
    """
    if not pump:
        yield None, ExchangeControl(trio.CancelScope(), response_timeout)
        return
    scope = PumpNursery(response_timeout)
    nursery, control = await scope.open()
    try:
        yield nursery, control
    finally:
        await scope.close()
