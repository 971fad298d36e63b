"""h2's connection without its eager ``repr(frame)`` per received frame.

h2 4.4's ``H2Connection._receive_frame`` starts with
``self.config.logger.trace("Received frame: %s", repr(frame))``: the frame's repr (its
flags sorted, its body serialized and hex-dumped) is built for every frame received,
before a logger that discards it (h2's default ``DummyLogger``, which we use) is even
called. That is ~10 Python calls and ~1 % of a tiny request per frame received over
HTTP/2 (docs/performance.md "Round two"). :class:`LazyReprH2Connection` is h2's method
with only that line changed to pass the frame itself (``%r``: the same text, formatted
only by a logger that emits it). Everything else is h2 4.4.1's code, unchanged.

It overrides a private method, so h2 is pinned to the tested minor (pyproject.toml,
``ingress/h2_engine.py`` ``SUPPORTED_H2``) and ``tests/unit/test_h2_frames.py`` fails when
the installed h2's ``_receive_frame`` differs from the one copied here
(:data:`H2_RECEIVE_FRAME_SHA256`). Upstream, the fix is one line (``"%r", frame``), which
would make this class unnecessary.
"""

from __future__ import annotations

import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import Frame, RstStreamFrame

#: sha256 of ``inspect.getsource(h2.connection.H2Connection._receive_frame)`` in h2 4.4.1,
#: the method copied below
H2_RECEIVE_FRAME_SHA256 = "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873"


class LazyReprH2Connection(h2.connection.H2Connection):
    """``h2.connection.H2Connection`` whose received frames are repr'd only if logged."""

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        events: list[h2.events.Event]
        self.config.logger.trace("Received frame: %r", frame)  # h2: "%s", repr(frame)
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # closed by RST_STREAM: answer with RST_STREAM; otherwise a connection error
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # a stream error when closed by RST_STREAM, a connection error when closed by
            # END_STREAM (STREAM_CLOSED) or implicitly (PROTOCOL_ERROR)
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)

        return events
