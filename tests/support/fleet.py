"""Test helpers for the worker-steering and multi-node tests: ``spooky-trio run`` as a real
process (a supervisor with workers, or one node), ngtcp2's ``gtlsclient`` downloads (with
``--change-local-addr`` / ``--nat-rebinding``: a client that moves mid-connection), metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.support.tools import require


class Output:
    """Collects a process's stderr in the background; :meth:`wait_for` waits for a pattern."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.data = bytearray()
        self._changed = trio.Event()

    async def pump(self) -> None:
        while chunk := await self.stream.receive_some(65536):
            self.data += chunk
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def wait_for(self, pattern: bytes, count: int = 1) -> None:
        while len(re.findall(pattern, self.data)) < count:
            changed = self._changed
            await changed.wait()
            if changed is self._changed:  # pump ended
                raise AssertionError(f"output ended before {pattern!r} x{count}: {bytes(self.data[-3000:])!r}")


@asynccontextmanager
async def spooky_process(config: Path, ready: bytes) -> AsyncIterator[tuple[trio.Process, Output]]:
    """``spooky-trio run --config`` until ``ready`` appears on its stderr; killed at the end
    unless it already exited (a test that drains it waits for that itself)."""
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    output = Output(proc.stderr)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        try:
            with trio.fail_after(30):
                await output.wait_for(ready)
            yield proc, output
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGTERM)  # a second one: stop now
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            nursery.cancel_scope.cancel()


async def gtls_download(host: str, port: int, path: str, download: Path, *flags: str) -> tuple[bool, str]:
    """One gtlsclient download of ``https://localhost:port{path}`` into ``download``;
    (completed, stderr tail). Completed means exit 0, the file downloaded, and its full size
    when the path is ``/bytes/N``."""
    gtlsclient = require("gtlsclient", "ngtcp2-client")
    download.mkdir(parents=True, exist_ok=True)
    argv = [gtlsclient, "--quiet", "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
            f"--download={download}", "--timeout=10s", *flags, host, str(port), f"https://localhost:{port}{path}"]
    with trio.fail_after(40):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    tail = result.stderr.decode(errors="replace")[-600:]
    if result.returncode != 0:
        return False, tail
    got = download / path.rsplit("/", 1)[-1]
    if not got.exists():  # (gtlsclient exits 0 after a CONNECTION_CLOSE too)
        return False, tail + " (nothing downloaded)"
    if path.startswith("/bytes/"):
        return got.stat().st_size == int(got.name), tail
    return True, tail


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of ``name{labels}`` in a Prometheus exposition (0 when absent)."""
    selector = f"{name}{{{labels}}}" if labels else name
    match = re.search(rf"^{re.escape(selector)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
