"""`make run`: the demo origin and the proxy in one process; Ctrl-C drains and stops both."""

from __future__ import annotations

import argparse
import sys

import trio

from spooky_trio.cli import _load
from spooky_trio.devtools.origin import serve_origin
from spooky_trio.observability.logging import configure_logging
from spooky_trio.serving.exits import StartupError
from spooky_trio.serving.server import Server


async def _main(config, origin_port: int) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_origin, "127.0.0.1", origin_port)
        server: Server = await nursery.start(Server(config).run)
        listener = server.listeners[0]
        host = "127.0.0.1" if listener.address in ("0.0.0.0", "::") else listener.address
        print(
            f"\nspooky-trio is serving HTTP/3 on https://{host}:{listener.port}/ "
            f"(demo origin on http://127.0.0.1:{origin_port}). Try:\n\n"
            f"  .venv/bin/spooky-trio request https://{host}:{listener.port}/ --http 3 --cacert .dev-certs/ca.pem -i\n\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        await server.stopped.wait()
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description="run the spooky-trio demo")
    parser.add_argument("--config", default="conf/dev.yaml")
    parser.add_argument("--origin-port", type=int, default=8081)
    args = parser.parse_args()
    config = _load(args.config)
    if config is None:
        return 1
    configure_logging(config.log)
    try:
        trio.run(_main, config, args.origin_port)
    except StartupError as exc:
        print(f"spooky-trio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
