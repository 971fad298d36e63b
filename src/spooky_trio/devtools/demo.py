"""`make run`: the demo origin and the proxy in one process.

Ports: ``--port`` (``make run PORT=...``) moves the proxy's first listener, ``--origin-port``
(``make run ORIGIN_PORT=...``) the demo origin and the backends that point at it (those at
``http://127.0.0.1:8081``, the origin of conf/dev.yaml). A port that is taken ends the demo
with one line naming it and a ``make run`` command with free ports, exit status 1.

Signals, as for ``spooky-trio run``: Ctrl-C drains the proxy, then stops the origin (exit
0); a second Ctrl-C stops at once with exit status 1.
"""

from __future__ import annotations

import argparse
import socket
import sys

import attrs
import trio

from spooky_trio.cli import _load
from spooky_trio.config import Config
from spooky_trio.devtools.origin import serve_origin
from spooky_trio.observability.logging import configure_logging
from spooky_trio.serving.exits import EXIT_FORCED, StartupError
from spooky_trio.serving.listeners import BindError
from spooky_trio.serving.server import Server

DEFAULT_PORT, DEFAULT_ORIGIN_PORT = 9889, 8081
ORIGIN_HOST = "127.0.0.1"


class PortTaken(Exception):
    """``what`` (``PORT`` or ``ORIGIN_PORT``) cannot be bound; the message says why."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


def with_ports(config: Config, port: int | None, origin_port: int) -> Config:
    """``config`` with its first listener on ``port`` (None: as configured) and the backends
    of the demo origin on ``origin_port``."""
    listen, listeners = config.listen, list(config.listeners)
    if port is not None:
        if listeners:
            listeners[0] = attrs.evolve(listeners[0], port=port)
        else:
            listen = attrs.evolve(listen, port=port)
    default_origin = f"http://{ORIGIN_HOST}:{DEFAULT_ORIGIN_PORT}"
    upstream = {
        name: attrs.evolve(pool, backends=[
            attrs.evolve(b, address=f"http://{ORIGIN_HOST}:{origin_port}") if b.address.rstrip("/") == default_origin else b
            for b in pool.backends
        ])
        for name, pool in config.upstream.items()
    }
    return attrs.evolve(config, listen=listen, listeners=listeners, upstream=upstream)


def free_port(after: int, host: str = "127.0.0.1") -> int:
    """The first port above ``after`` that UDP and TCP can both bind now (a suggestion)."""
    for candidate in range(after + 1, min(after + 200, 65535)):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind((host, candidate))
                t.bind((host, candidate))
        except OSError:
            continue
        return candidate
    return after + 1


async def _main(config: Config, origin_port: int, status: dict[str, int]) -> None:
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(serve_origin, ORIGIN_HOST, origin_port)
        except OSError as exc:
            raise PortTaken("ORIGIN_PORT", f"the demo origin cannot listen on tcp {ORIGIN_HOST}:{origin_port}: {exc.strerror or exc}") from None
        try:
            server: Server = await nursery.start(Server(config).run)
        except StartupError as exc:
            if isinstance(exc.__cause__, (BindError, OSError)):  # the port, not a certificate
                raise PortTaken("PORT", f"the proxy cannot start: {exc}") from None
            raise
        listener = server.listeners[0]
        host = "127.0.0.1" if listener.address in ("0.0.0.0", "::") else listener.address
        print(
            f"\nspooky-trio is serving HTTP/3 on https://{host}:{listener.port}/ "
            f"(demo origin on http://{ORIGIN_HOST}:{origin_port}). Try:\n\n"
            f"  .venv/bin/spooky-trio request https://{host}:{listener.port}/ --http 3 --cacert .dev-certs/ca.pem -i\n\n"
            "Ctrl-C drains and stops everything; a second Ctrl-C stops at once.\n",
            flush=True,
        )
        await server.stopped.wait()
        status["exit"] = EXIT_FORCED if server.forced else 0
        nursery.cancel_scope.cancel()


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error inside nested nursery groups (None when there are several)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the spooky-trio demo (make run)")
    parser.add_argument("--config", default="conf/dev.yaml")
    parser.add_argument("--port", type=int, default=None, help="the proxy's port (default: the config's)")
    parser.add_argument("--origin-port", type=int, default=DEFAULT_ORIGIN_PORT)
    args = parser.parse_args(argv)
    loaded = _load(args.config)
    if loaded is None:
        return 1
    config = with_ports(loaded, args.port, args.origin_port)
    configure_logging(config.log)
    status = {"exit": EXIT_FORCED}
    port = config.effective_listeners()[0].port
    try:
        trio.run(_main, config, args.origin_port, status)
    except BaseExceptionGroup as group:
        first = _only(group)
        if isinstance(first, StartupError):
            print(f"spooky-trio: {first}", file=sys.stderr)
            return 1
        if not isinstance(first, PortTaken):
            raise
        other = {"PORT": port, "ORIGIN_PORT": args.origin_port}
        other[first.what] = free_port(other[first.what])
        print(f"make run: {first}; choose other ports: make run PORT={other['PORT']} ORIGIN_PORT={other['ORIGIN_PORT']}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal while nothing handled it (before or after the server ran)
        return EXIT_FORCED
    return status["exit"]


if __name__ == "__main__":
    raise SystemExit(main())
