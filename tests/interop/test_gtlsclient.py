"""Interop: an independent HTTP/3 stack (ngtcp2 + nghttp3, Debian's ``gtlsclient``) through
the real proxy, so our QUIC/HTTP/3 is not only ever tested against aioquic itself.

Skipped, with the reason, when ngtcp2-client is not installed; under ``CI=true`` that fails
instead (``.ci/run`` installs it first: tests/support/tools.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.support.backends import run_backend
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy
from tests.support.tools import require

GTLSCLIENT: str | None = None


@pytest.fixture(autouse=True)
def gtlsclient() -> str:
    global GTLSCLIENT
    GTLSCLIENT = require("gtlsclient", "ngtcp2-client")
    return GTLSCLIENT


async def _fetch(port: int, paths: list[str], download: Path) -> trio.CompletedProcess[bytes]:
    assert GTLSCLIENT is not None
    argv = [GTLSCLIENT, "--quiet", "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
            f"--download={download}", "--timeout=15s", "127.0.0.1", str(port),
            *[f"https://localhost:{port}{path}" for path in paths]]
    with trio.fail_after(30):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


async def test_gtlsclient_requests_are_proxied(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        port = server.listeners[0].port
        result = await _fetch(port, ["/echo", "/bytes/200000"], tmp_path)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        echo = json.loads((tmp_path / "echo").read_bytes())
        assert echo["backend"] == "h1" and echo["method"] == "GET" and echo["path"] == "/echo"
        assert len((tmp_path / "200000").read_bytes()) == 200000
    assert len(backend.requests) == 2
