"""CPU per pooled HTTP/1.1 exchange, A/B between source trees: the upstream client alone.

``PYTHONPATH=src:. python -m bench.h1_exchange NAME=SRC [NAME=SRC ...] [-n 20000 -c 8 -r 10]``

Starts the bench origin (nginx when installed), then per repetition and per target (order
alternating) runs a fresh process with ``PYTHONPATH=SRC`` that sends ``-n`` tiny GETs through
``UpstreamPool.exchange`` from ``-c`` concurrent tasks (after a warm-up) and reports its
own CPU time (user + system) per exchange. No QUIC, no pipeline: a change to the HTTP/1.1
client shows here at a resolution the whole-proxy bench cannot reach on a shared box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.targets import Origin, make_certs

CHILD = r"""
import resource, sys, time, trio
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream import BackendTarget, UpstreamPool

N, CONC, PORT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

async def main():
    pool = UpstreamPool()
    target = BackendTarget(scheme="http", host="127.0.0.1", port=PORT)
    request = UpstreamRequest(method=b"GET", target=b"/", authority=b"localhost", headers=[(b"user-agent", b"h1-exchange")])

    async def worker(count):
        for _ in range(count):
            async with pool.exchange(target, request, connect_timeout=5, response_timeout=5) as response:
                while await response.receive():
                    pass

    async def batch(count):
        async with trio.open_nursery() as nursery:
            for _ in range(CONC):
                nursery.start_soon(worker, count)

    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await batch(200)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await batch(N // CONC)
        after, end = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(f"{cpu / N * 1e6:.2f} {N / (end - start):.0f}")
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.h1_exchange", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", metavar="NAME=SRC", help="a name and a src/ directory to import spooky_trio from")
    parser.add_argument("-n", "--exchanges", type=int, default=20000)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-r", "--repeat", type=int, default=10)
    args = parser.parse_args()
    targets = [(name, str(Path(src).resolve())) for name, _, src in (t.partition("=") for t in args.targets)]
    results: dict[str, list[float]] = {name: [] for name, _ in targets}
    with tempfile.TemporaryDirectory(prefix="spooky-h1-exchange-") as tmp:
        certs = Path(tmp) / "certs"
        make_certs(certs)
        origin = Origin(Path(tmp), certs)
        origin.start()
        try:
            for rep in range(args.repeat):
                for name, src in targets if rep % 2 == 0 else targets[::-1]:
                    argv = [sys.executable, "-c", CHILD, str(args.exchanges), str(args.concurrency), str(origin.h1_port)]
                    out = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=src), capture_output=True, text=True, check=True).stdout.split()
                    results[name].append(float(out[0]))
                    print(f"run {rep + 1} {name}: {out[0]} us CPU per exchange, {out[1]} exchanges/s", file=sys.stderr, flush=True)
        finally:
            origin.stop()
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.1f} us CPU per exchange (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})")


if __name__ == "__main__":
    main()
