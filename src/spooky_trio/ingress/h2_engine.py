"""The HTTP/2 server engine: h2's connection, with a malformed request a stream error.

RFC 9113 8.1.1: a malformed request is a *stream* error (RST_STREAM PROTOCOL_ERROR, or a
4xx answer), never a reason to drop the connection and every sibling stream with it. h2
turns every header problem into a connection-wide ``ProtocolError`` instead, so:

* its own header validation is off (``validate_inbound_headers=False``): the one
  validator of ``http/validate.py`` checks every request head and the ingress answers 400;
* what h2 still raises after it decoded a header block (a non-numeric or conflicting
  ``content-length``, a field block it cannot accept on that stream, trailers without
  END_STREAM) is caught here and becomes a reset of that stream alone, reported as a
  :class:`MalformedStream` event. HPACK decoding errors stay connection errors: the
  compression context is shared, so a broken block breaks the connection (RFC 9113 4.3).

This module overrides h2 internals (``_receive_headers_frame``, ``_get_or_create_stream``;
``http/h2_frames.py``, its base, ``_receive_frame``); h2 is pinned to the tested minor in pyproject.toml and the
import fails loudly (:class:`UnsupportedH2`) if those hooks moved.
"""

from __future__ import annotations

import inspect

import attrs
import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, HeadersFrame

from spooky_trio.http.h2_frames import LazyReprH2Connection

#: the h2 releases this module was written and tested against (pyproject.toml pins the same)
SUPPORTED_H2 = ">=4.4,<4.5"


class UnsupportedH2(ImportError):
    """The installed h2 lacks a private hook this module overrides: install :data:`SUPPORTED_H2`."""


@attrs.define(slots=True)
class MalformedStream(h2.events.Event):
    """A request stream this engine reset because its header block was malformed."""

    stream_id: int
    reason: str


class StreamScopedH2Connection(LazyReprH2Connection):
    """h2's connection for the server side with the behaviour of the module docstring."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        #: the stream whose header block h2 decoded last (set once HPACK succeeded)
        self._decoded_stream: int | None = None

    def _get_or_create_stream(self, stream_id: int, allowed_ids: h2.connection.AllowedStreamIDs) -> h2.stream.H2Stream:
        # h2 calls this right after decoding a HEADERS block: from here on a ProtocolError
        # concerns the stream, not the shared compression context
        stream = super()._get_or_create_stream(stream_id, allowed_ids)
        self._decoded_stream = stream_id
        return stream

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        self._decoded_stream = None
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.ProtocolError as exc:
            stream_id = self._decoded_stream
            if stream_id is None or stream_id != frame.stream_id or type(exc) is not h2.exceptions.ProtocolError:
                raise  # HPACK, stream-ID or flow-control trouble: the connection's
            self.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return [], [MalformedStream(stream_id=stream_id, reason=str(exc))]


def _check_hooks() -> None:
    """Fail at import when h2 no longer has the hooks overridden above (module docstring)."""
    expected = {"_receive_headers_frame": ["self", "frame"], "_get_or_create_stream": ["self", "stream_id", "allowed_ids"]}
    for name, params in expected.items():
        hook = h2.connection.H2Connection.__dict__.get(name)
        if hook is None or list(inspect.signature(hook).parameters) != params:
            raise UnsupportedH2(f"spooky-trio needs h2{SUPPORTED_H2} (installed: {h2.__version__}): H2Connection.{name} changed")


_check_hooks()
