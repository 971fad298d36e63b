"""``discovery.kind: file``: a YAML or JSON list of backends, re-read when it changes.

Every ``refresh_ms`` the file is read whole (at most :data:`MAX_FILE_BYTES`, within
``timeout_ms``) and compared with the last content read: the same bytes are no news (not
parsed, not counted). New content is parsed with the config's YAML rules and checked like
config backends (``config/backend_entries.py``): a list of ``{id, address, weight,
health_check}`` or ``{backends: [...]}``. Content that does not parse or check, or names no
backend, keeps the last good set and is counted and logged once (until the content changes
again); a file that cannot be read is counted at every attempt and logged when the streak
starts. A writer should replace the file atomically (write a temporary file, rename it):
a half-written file is refused as invalid, never applied.
"""

from __future__ import annotations

import trio

from spooky_trio.config.backend_entries import EntryError, parse_document
from spooky_trio.discovery.source import Answer, DiscoveryError

#: the largest discovery file read (a bound on the buffer; about 20000 backends of YAML)
MAX_FILE_BYTES = 4 * 1024 * 1024


class FileSource:
    """Reads one discovery file (module docstring); ``path`` is relative to the working directory."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._last: bytes | None = None

    async def fetch(self) -> Answer | None:
        """The file's backends, or None when its content is what the last call read."""
        content = await self._read()
        if content == self._last:
            return None
        self._last = content
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DiscoveryError("invalid", f"{self.path} is not UTF-8 (byte {exc.start})") from None
        try:
            entries = parse_document(text)
        except EntryError as exc:
            raise DiscoveryError("invalid", f"{self.path}: {exc}") from None
        return Answer(entries)

    async def _read(self) -> bytes:
        # a worker thread that is abandoned at the deadline: a hung file system (NFS) costs
        # one stuck thread, never a stuck source task
        with trio.move_on_after(self.timeout) as scope:
            try:
                content = await trio.to_thread.run_sync(_read_bounded, self.path, abandon_on_cancel=True)
            except FileNotFoundError:
                self._last = None
                raise DiscoveryError("not_found", f"{self.path} does not exist") from None
            except OSError as exc:
                self._last = None
                raise DiscoveryError("unreachable", f"cannot read {self.path}: {exc.strerror or exc}") from None
        if scope.cancelled_caught:
            self._last = None
            raise DiscoveryError("timeout", f"reading {self.path} took more than {self.timeout * 1000:.0f} ms")
        if len(content) > MAX_FILE_BYTES:
            raise DiscoveryError("too_large", f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        return content


def _read_bounded(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(MAX_FILE_BYTES + 1)
