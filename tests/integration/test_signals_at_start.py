"""A reload asked while the daemon starts (``systemctl reload`` right after ``start``): the
signal's default action used to end the process, or a worker still starting (and with it
the whole supervisor). Now the process ignores it until its handler is installed, and the
supervisor hands it to a starting worker once that worker serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.support.fleet import Output
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml


def config_text(certs_dir: Path, cport: int, workers: int = 1) -> str:
    return proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=(
        f"observability:\n  control_api:\n    enabled: true\n    port: {cport}\n"
        f"performance:\n  worker_threads: {workers}\n"
    ))


async def wait_ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
        with trio.fail_after(30):
            while True:
                try:
                    if (await api.get("/ready")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)


async def test_sighup_while_the_process_starts_is_ignored(certs_dir: Path, tmp_path: Path) -> None:
    # the config file is a FIFO: the process blocks reading it, past the point where it
    # began to ignore SIGHUP and before its reload handler exists
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    cport = free_udp_port()
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(fifo)], stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            writer = await trio.to_thread.run_sync(os.open, fifo, os.O_WRONLY)  # returns once the process opened it
        proc.send_signal(signal.SIGHUP)
        await trio.sleep(0.2)
        assert proc.returncode is None and proc.poll() is None, "SIGHUP ended a starting process"
        text = config_text(certs_dir, cport).encode()
        # later reads (the reload manager reads the file once more, for rollbacks) find a
        # plain file: a second FIFO round could pair our writer with the first reader before
        # it closed, and the text would be lost
        plain = tmp_path / "plain.yaml"
        plain.write_bytes(text)
        os.replace(plain, fifo)
        os.write(writer, text)
        os.close(writer)
        await wait_ready(cport)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_reaches_a_starting_worker_once_it_serves(certs_dir: Path, tmp_path: Path) -> None:
    config, cport = tmp_path / "config.yaml", free_udp_port()
    config.write_text(config_text(certs_dir, cport, workers=2))
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    output = Output(proc.stderr)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.pump)
        try:
            with trio.fail_after(30):
                await output.wait_for(rb"worker 1 started \(pid \d+\)")  # both spawned, neither serving yet
            proc.send_signal(signal.SIGHUP)
            with trio.fail_after(30):
                await output.wait_for(b"all 2 workers serving")
                await output.wait_for(rb"config generation 2 applied \(SIGHUP", 2)  # each worker, once serving
            await wait_ready(cport)
            assert b"exited with status" not in output.data
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            nursery.cancel_scope.cancel()
