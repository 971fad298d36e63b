"""InstanceLocks (serving/instance_lock.py): exclusive per address and port, counted per
user, naming the holder's pid, freed with the holder, probes answered so none pile up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from spooky_trio.serving.instance_lock import (
    PROBE_BACKLOG,
    InstanceLocks,
    ListenerInUse,
    held_by_my_supervisor,
    holder_pid,
    lock_name,
    parent_pid,
    supported,
)
from tests.support.proxy import free_udp_port

pytestmark = pytest.mark.skipif(not supported(), reason="abstract unix sockets are Linux only")


def test_second_holder_is_refused_with_address_and_pid() -> None:
    port = free_udp_port()
    first, second = InstanceLocks(), InstanceLocks()
    first.acquire("127.0.0.1", port)
    try:
        with pytest.raises(ListenerInUse) as refused:
            second.acquire("127.0.0.1", port)
        message = str(refused.value)
        assert f"127.0.0.1:{port}" in message and f"pid {os.getpid()}" in message and "\n" not in message
        assert refused.value.pid == os.getpid()
        second.acquire("127.0.0.2", port)  # another address is another lock
        second.acquire("127.0.0.1", port + 1)
    finally:
        first.release_all()
        second.release_all()


def test_canonical_address_and_release_frees_the_name() -> None:
    port = free_udp_port()
    assert lock_name("::0", port) == lock_name("::", port) != lock_name("0.0.0.0", port)
    first, second = InstanceLocks(), InstanceLocks()
    first.acquire("::0", port)
    with pytest.raises(ListenerInUse):
        second.acquire("::", port)
    first.release("::", port)
    second.acquire("::", port)  # free again
    assert second.held == [lock_name("::", port)]
    second.release_all()
    assert holder_pid(lock_name("::", port)) is None


def test_uses_are_counted() -> None:
    port = free_udp_port()
    locks, other = InstanceLocks(), InstanceLocks()
    locks.acquire("127.0.0.1", port)
    locks.acquire("127.0.0.1", port)  # a re-added listener while the removed one drains
    locks.release("127.0.0.1", port)
    with pytest.raises(ListenerInUse):
        other.acquire("127.0.0.1", port)
    locks.release("127.0.0.1", port)
    other.acquire("127.0.0.1", port)
    other.release_all()


def test_tolerated_holder_is_shared_not_refused() -> None:
    port = free_udp_port()
    supervisor = InstanceLocks()
    supervisor.acquire("127.0.0.1", port)
    seen: list[int] = []
    worker = InstanceLocks(tolerate=lambda pid: seen.append(pid) is None)
    worker.acquire("127.0.0.1", port)
    assert seen == [os.getpid()] and worker.held == []
    worker.release("127.0.0.1", port)  # a shared lock is not the worker's to free
    assert holder_pid(lock_name("127.0.0.1", port)) == os.getpid()
    supervisor.release_all()


def test_a_killed_holder_leaves_no_stale_lock() -> None:
    port = free_udp_port()
    code = (
        "import sys, time\n"
        "from spooky_trio.serving.instance_lock import InstanceLocks\n"
        "locks = InstanceLocks()\n"
        f"locks.acquire('127.0.0.1', {port})\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ListenerInUse, match=f"pid {holder.pid}"):
            InstanceLocks().acquire("127.0.0.1", port)
    finally:
        holder.kill()
        holder.wait()
    locks = InstanceLocks()
    locks.acquire("127.0.0.1", port)  # the kernel freed the name with the process
    locks.release_all()


def test_parent_and_sibling_count_as_the_same_instance() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    assert parent_pid(2**22 + 12345) is None
    code = "from spooky_trio.serving.instance_lock import held_by_my_supervisor as h; import os, sys; print(h(int(sys.argv[1])), h(os.getpid()), h(1))"
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # run in a child of this process: this process is its "supervisor", `sibling` its sibling
        out = subprocess.run([sys.executable, "-c", code, str(sibling.pid)], capture_output=True, text=True, check=True).stdout
    finally:
        sibling.kill()
        sibling.wait()
    assert out.split() == ["True", "True", "False"]  # (its own pid's parent is this process too)
    assert held_by_my_supervisor(os.getppid())


async def test_probes_are_answered_so_they_never_fill_the_backlog() -> None:
    port = free_udp_port()
    locks = InstanceLocks()
    locks.acquire("127.0.0.1", port)
    name = lock_name("127.0.0.1", port)
    async with trio.open_nursery() as nursery:
        await nursery.start(locks.run)
        for _ in range(3 * PROBE_BACKLOG):
            assert holder_pid(name) == os.getpid()
            await trio.sleep(0)  # let the holder accept
        later = free_udp_port()
        locks.acquire("127.0.0.1", later)  # taken while running: answered too
        for _ in range(2 * PROBE_BACKLOG):
            assert holder_pid(lock_name("127.0.0.1", later)) == os.getpid()
            await trio.sleep(0)
        locks.release_all()  # wakes and ends the answering tasks
        with trio.fail_after(5):
            while holder_pid(name) is not None:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_lock_released_before_its_answering_task_ran() -> None:
    # a listener that took its lock and then failed to bind (a reload's staging)
    locks = InstanceLocks()
    async with trio.open_nursery() as nursery:
        await nursery.start(locks.run)
        port = free_udp_port()
        locks.acquire("127.0.0.1", port)
        locks.release("127.0.0.1", port)
        for _ in range(5):
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert holder_pid(lock_name("127.0.0.1", port)) is None
