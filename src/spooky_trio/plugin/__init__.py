"""The plugin API of spooky-trio: everything a filter plugin imports (docs/plugins.md).

A plugin is a normal installed Python package. The config names a **factory** in it, by
entry point (group ``spooky_trio.filters``) or by import path (``object: "pkg.mod:attr"``)::

    plugins:
      - name: tenant
        entry_point: tenant-header
        config: {header: x-tenant, required: true}
    upstream:
      api:
        filters: [tenant]

The factory is any callable ``(config: dict) -> filter``, a class or a function. It gets a
fresh copy of the entry's ``config`` mapping and validates it there, raising
:class:`PluginConfigError` for a bad one (``spooky-trio check`` reports it at
``plugins[i].config``, with the line). It is called when a config is checked (the filter it
returns then is dropped) and once for every generation the config serves (each reload builds
new filters; requests already running finish with the old ones): do no I/O in it beyond
reading its own files, and start nothing; a long-running job belongs in ``background``.

A **filter** has any of these, all ``async def``:

* ``on_request(request) -> Response | None`` (:class:`Filter`): runs for each request of the
  pools that list it, after auth and rate limits, in the pool's ``filters`` order. Return a
  :class:`Response` to answer the request yourself, None to let it go on; change the request
  through the :class:`Request` view (path, query, headers, a buffered body).
* ``on_response(request, response)`` (:class:`ResponseFilter`): sees the :class:`ResponseHead`
  of the answer (the backend's or a local one) before it goes out, in reverse order.
* ``background()`` (:class:`BackgroundFilter`): a task started when the filter's generation
  starts serving and cancelled when it retires (restarted after a back-off when it fails).

and optionally ``request_body_limit: int``: the proxy then reads the request body (at most
that many bytes: more is answered 413) before the first hook, as ``request.body``.

Every hook runs under the entry's ``plugin_timeout_ms``; a hook that raises, overruns it or
returns something else than documented fails its request with a 500 (the access log's reason
``plugin_error:<name>``, ``plugin_timeout:<name>`` or ``plugin_invalid:<name>``; counted in
``spooky_plugin_errors_total{plugin,kind}``), and other requests go on. Isolation is by
contract and deadlines, in one process: a hook that blocks the event loop (a synchronous
call, CPU work) stalls every request while it runs; the proxy detects and reports it
(docs/plugins.md, "What a plugin can still do").

:data:`API_VERSION` is this API's version: the major number changes when something here
changes incompatibly, the minor one when something is added. :func:`require_api` checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from spooky_trio.plugin.headers import Headers
from spooky_trio.plugin.messages import Request, Response, ResponseHead, Route, TlsInfo

__all__ = [
    "API_VERSION",
    "BackgroundFilter",
    "Factory",
    "Filter",
    "Headers",
    "IncompatibleApi",
    "PluginConfigError",
    "Request",
    "Response",
    "ResponseFilter",
    "ResponseHead",
    "Route",
    "TlsInfo",
    "require_api",
]

#: (major, minor) of this API (module docstring)
API_VERSION: Final = (1, 0)


class PluginConfigError(ValueError):
    """A factory's answer to a bad ``config``: ``message`` and the key ``path`` inside
    ``config`` it is about (``PluginConfigError("must be a header name", "header")``); the
    proxy reports it at ``plugins[i].config.<path>``. Never quote a secret in it."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.path: tuple[str | int, ...] = path


class IncompatibleApi(RuntimeError):
    """Raised by :func:`require_api` when this proxy's API is not the one a plugin needs."""


def require_api(major: int, minor: int = 0) -> None:
    """Raise :class:`IncompatibleApi` unless this proxy offers API ``major.minor`` or a later
    minor of the same major (call it in your factory)."""
    if API_VERSION[0] != major or API_VERSION[1] < minor:
        raise IncompatibleApi(f"this plugin needs the spooky-trio plugin API {major}.{minor}; this proxy offers "
                              f"{API_VERSION[0]}.{API_VERSION[1]}")


class Filter(Protocol):
    """A filter with a request hook (module docstring)."""

    async def on_request(self, request: Request) -> Response | None:
        """Answer ``request`` (return a :class:`Response`) or let it go on (None)."""
        ...


class ResponseFilter(Protocol):
    """A filter with a response hook (module docstring)."""

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        """Look at or change ``response`` before it goes to the client."""
        ...


class BackgroundFilter(Protocol):
    """A filter with a task of its own (module docstring)."""

    async def background(self) -> None:
        """Run while the filter's generation serves; cancelled when it retires."""
        ...


#: what ``entry_point`` or ``object`` names: a callable from the entry's ``config`` to a filter
Factory = Callable[[dict[str, object]], object]
