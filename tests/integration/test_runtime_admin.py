"""Control API runtime actions: certificate reload (QUIC and TCP), QUIC handshake counters,
certificate expiry gauges, the reload placeholder, and restart (drain + exit status 75)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import trio
import trustme
from cryptography import x509

from spooky_trio.clients.h3 import H3Client, H3ConnectError
from spooky_trio.serving.exits import EXIT_RESTART
from tests.integration.test_observability import TOKEN, observability_yaml, scrape
from tests.support.backends import run_backend
from tests.support.bootstrap import client_context, tls_connect
from tests.support.proxy import free_udp_port, h1_pool, running_proxy

AUTH = {"authorization": f"Bearer {TOKEN}"}


def write_leaf(ca: trustme.CA, directory: Path) -> int:
    """Issue a new localhost certificate into directory/{leaf.pem,leaf.key}; returns its serial."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(directory / "leaf.key"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "leaf.pem"))
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def config_text(directory: Path, upstream: str, extra: str) -> str:
    return (
        "version: 1\nlisten:\n  address: 127.0.0.1\n"
        f"  port: {free_udp_port()}\n  tls:\n    cert: {directory / 'leaf.pem'}\n    key: {directory / 'leaf.key'}\n"
        "upstream:\n" + "\n".join("  " + line for line in upstream.strip("\n").splitlines()) + "\n"
        "security:\n  privileges:\n    enabled: false\n" + extra
    )


async def quic_serial(port: int, cafile: str) -> int:
    async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=cafile) as c:
        assert c.peer_certificate is not None
        # a request makes sure the server saw the client's Finished (counted as a handshake)
        assert (await c.request("GET", "/echo", authority="localhost")).status == 200
        return c.peer_certificate.serial_number


async def tcp_serial(port: int, certs_dir: Path) -> int:
    stream = await tls_connect(port, client_context(certs_dir))
    try:
        der = stream.getpeercert(binary_form=True)
    finally:
        await stream.aclose()
    return x509.load_der_x509_certificate(der).serial_number


async def test_reload_certs_new_handshakes_old_connections_and_broken_file(ca: trustme.CA, certs_dir: Path, tmp_path: Path) -> None:
    cafile = str(certs_dir / "ca.pem")
    first = write_leaf(ca, tmp_path)
    mport, cport = free_udp_port(), free_udp_port()
    text = config_text(tmp_path, h1_pool("{url}", prefix="/echo"), observability_yaml(mport, cport))
    async with run_backend(name="h1") as backend, running_proxy(text.replace("{url}", backend.url)) as server, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as http:
        port = server.listeners[0].port
        assert await quic_serial(port, cafile) == first
        assert await tcp_serial(port, certs_dir) == first
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=cafile) as old:
            assert (await old.request("GET", "/echo", authority="localhost")).status == 200
            second = write_leaf(ca, tmp_path)
            assert (await http.post("/admin/runtime/reload-certs")).status_code == 401
            assert (await http.get("/admin/runtime/reload-certs", headers=AUTH)).status_code == 405
            r = await http.post("/admin/runtime/reload-certs", headers=AUTH)
            assert r.status_code == 200, r.text
            assert r.json()["reloaded"][0]["certificates"][0]["serial"] == format(second, "x")
            assert await quic_serial(port, cafile) == second
            assert await tcp_serial(port, certs_dir) == second
            # the connection opened before the reload keeps working
            assert (await old.request("GET", "/echo", authority="localhost")).status == 200
            assert old.peer_certificate is not None and old.peer_certificate.serial_number == first

            (tmp_path / "leaf.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
            r = await http.post("/admin/runtime/reload-certs", headers=AUTH)
            assert r.status_code == 422
            assert "leaf.pem" in r.json()["error"]
            assert await quic_serial(port, cafile) == second  # old material kept
            assert await tcp_serial(port, certs_dir) == second

        # reload_path is real (tests/integration/test_reload.py); this server has no file to re-read
        r = await http.post("/admin/runtime/reload", headers=AUTH)
        assert r.status_code == 409 and "not started from a config file" in r.json()["errors"][0]["message"]
        _, values = await scrape(mport)
        labels = (("listener", f"127.0.0.1:{port}"), ("server_name", "default"))
        not_after = server.listeners[0].identities.primary.certificate.not_valid_after_utc.timestamp()
        assert values[("spooky_downstream_tls_certificate_not_after_seconds", labels)] == not_after
        assert values[("spooky_downstream_tls_certificate_days_remaining", labels)] > 1
        assert values[("spooky_downstream_tls_alpn_total", (("listener", f"127.0.0.1:{port}"), ("protocol", "h3")))] == 4
        # success counts QUIC (4 handshakes) plus TCP (3)
        assert values[("spooky_downstream_tls_handshake_success_total", ())] == 7


async def test_quic_handshake_failure_counted(certs_dir: Path, tmp_path: Path) -> None:
    mport, cport = free_udp_port(), free_udp_port()
    text = config_text(certs_dir, h1_pool("http://127.0.0.1:9"), observability_yaml(mport, cport))
    text = text.replace(str(certs_dir / "leaf.pem"), str(certs_dir / "localhost.pem"))
    text = text.replace(str(certs_dir / "leaf.key"), str(certs_dir / "localhost.key"))
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with running_proxy(text) as server:
        port = server.listeners[0].port
        try:
            with trio.fail_after(10):
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(other_ca)) as c:
                    await c.request("GET", "/", authority="localhost")
        except H3ConnectError:
            pass
        with trio.fail_after(10):
            while server.listeners[0].stats["handshake_failure"] == 0:
                await trio.sleep(0.05)
        _, values = await scrape(mport)
        assert values[("spooky_downstream_tls_handshake_failure_total", (("listener", f"127.0.0.1:{port}"), ("reason", "handshake")))] == 1
        assert server.listeners[0].stats["handshake_success"] == 0


async def _read_until(stream: trio.abc.ReceiveStream, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"output ended before {needle!r}: {bytes(seen)!r}")
        seen.extend(chunk)


async def test_restart_endpoint_drains_and_exits_75(ca: trustme.CA, certs_dir: Path, tmp_path: Path) -> None:
    write_leaf(ca, tmp_path)
    mport, cport = free_udp_port(), free_udp_port()
    async with run_backend(name="slow") as backend:
        config = tmp_path / "config.yaml"
        config.write_text(config_text(tmp_path, h1_pool(backend.url), observability_yaml(mport, cport)
                                      + "performance:\n  shutdown_drain_timeout_ms: 8000\n"))
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "spooky_trio", "run", "--config", str(config)], stderr=subprocess.PIPE)
        assert proc.stderr is not None
        output = bytearray()
        try:
            with trio.fail_after(20):
                await _read_until(proc.stderr, b"serving the control API", output)
            port = int(next(line.split(":")[1] for line in config.read_text().splitlines() if line.strip().startswith("port:")))
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                result: dict[str, int | None] = {}

                async def slow() -> None:
                    result["status"] = (await c.request("GET", "/slow/1000", authority="localhost")).status

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(slow)
                    with trio.fail_after(10):
                        await backend.wait_for_requests(1)
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as http:
                        r = await http.post("/admin/runtime/restart", headers=AUTH)
                    assert r.status_code == 202 and str(EXIT_RESTART) in r.text
            assert result["status"] == 200  # the in-flight request finished during the drain
            with trio.fail_after(15):
                code = await proc.wait()
            assert code == EXIT_RESTART == 75
            await _read_until(proc.stderr, b"stopped", output)
            assert b"restart requested" in output
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
