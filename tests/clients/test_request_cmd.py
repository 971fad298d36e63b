"""``spooky-trio request`` against hypercorn over HTTP/3, HTTP/2 and HTTP/1.1."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import trio

from spooky_trio.clients import request_cmd
from tests.clients.conftest import MiB, Server, pattern_bytes


async def run_main(argv: list[str]) -> int:
    """``request_cmd.main`` calls ``trio.run``, so run it in a worker thread."""
    return await trio.to_thread.run_sync(request_cmd.main, argv)


@pytest.mark.parametrize("version", ["3", "2", "1.1"])
async def test_get_prints_body(version: str, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"https://localhost:{server.port}/echo?v={version}"
    code = await run_main([url, "--http", version, "--cacert", server.cafile, "-H", "X-Probe: 1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads(out)
    assert info["http_version"] == version and info["query"] == f"v={version}"
    assert ["x-probe", "1"] in [[k.lower(), v] for k, v in info["headers"]]


@pytest.mark.parametrize("version", ["3", "2", "1.1"])
async def test_post_with_include_and_output_file(version: str, server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "body.bin"
    data.write_bytes(pattern_bytes(MiB // 4))
    out_file = tmp_path / "out.bin"
    argv = [f"https://localhost:{server.port}/raw", "--http", version, "--cacert", server.cafile, "-d", f"@{data}", "-i", "-o", str(out_file)]
    code = await run_main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"HTTP/{version} 201\n")
    assert out.endswith("\n\n") and "x-info: " in out.lower()
    assert out_file.read_bytes() == data.read_bytes()


async def test_h2_trailers_printed_with_include(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [f"https://localhost:{server.port}/trailers", "--http", "2", "--cacert", server.cafile, "-i", "-H", "te: trailers"]
    code = await run_main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("HTTP/2 200\n")
    assert out.endswith("\n\nwith trailers\ngrpc-status: 0\n")


async def test_insecure_skips_verification(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("3", "2"):
        assert await run_main([f"https://127.0.0.1:{server.port}/echo", "--http", version, "-k", "-X", "DELETE"]) == 0
        assert json.loads(capsys.readouterr().out)["method"] == "DELETE"


@pytest.mark.parametrize("version", ["3", "2", "1.1"])
async def test_untrusted_certificate_is_one_line_error(version: str, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    # no --cacert: the system store does not know the test CA
    code = await run_main([f"https://localhost:{server.port}/echo", "--http", version, "--timeout", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("spooky-trio request: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and "certificate" in err.lower()


async def test_connection_failures_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed for TCP and (almost surely) UDP once released
    for version in ("3", "1.1"):
        assert await run_main([f"https://127.0.0.1:{port}/", "--http", version, "--timeout", "5"]) == 1
        err = capsys.readouterr().err
        assert "refused" in err.lower() and err.count("\n") == 1


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert request_cmd.main(["http://localhost/"]) == 1  # HTTP/3 needs https
    assert "https://" in capsys.readouterr().err
    assert request_cmd.main(["https://localhost/", "-H", "no-colon"]) == 1
    assert "invalid header" in capsys.readouterr().err
    assert request_cmd.main(["https://localhost/", "-d", "@/nonexistent/file"]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        request_cmd.main(["https://localhost/", "--http", "4"])


@pytest.mark.parametrize("version", ["3", "2"])
async def test_certificate_failure_in_a_process_prints_only_our_line(version: str, server: Server) -> None:
    # a process of its own: no test logging handlers, as an operator runs it
    argv = [sys.executable, "-m", "spooky_trio", "request", f"https://127.0.0.1:{server.port}/echo", "--http", version, "--timeout", "10"]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b""
    assert err.startswith("spooky-trio request: error: ") and err.count("\n") == 1, err
    assert "certificate" in err
    # -v shows what the libraries said (aioquic's handshake error, for HTTP/3)
    verbose = await trio.run_process(argv + ["-v"], capture_stdout=True, capture_stderr=True, check=False)
    assert verbose.returncode == 1 and verbose.stderr.decode().count("\n") >= (2 if version == "3" else 1)
