"""The plugin variants of the spooky target (docs/plugins.md, docs/performance.md "Plugins"):

* ``-t spooky+plugin-noop``: the bench pool lists one filter whose ``on_request`` does
  nothing (:class:`NoopFilter`, by ``object:``): the fixed cost of the plugin step, the
  request view and one guarded hook call;
* ``-t spooky+plugin-example``: the example package's ``tenant-header`` filter
  (examples/plugins/spooky-example-filters, from the checkout: its ``src`` goes on the
  proxy's PYTHONPATH), the load sending ``x-tenant: acme``: reads and checks a header,
  removes and sets one upstream, sets one on every answer (request and response hook).
"""

from __future__ import annotations

from pathlib import Path

from spooky_trio.plugin import Request, Response

EXAMPLE_SRC = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "spooky-example-filters" / "src"
MODES = ("noop", "example")


class NoopFilter:
    """A filter that lets every request go on."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    async def on_request(self, request: Request) -> Response | None:
        return None


class BenchPlugin:
    """One plugin mode: the pool's ``filters``, the top-level ``plugins``, the headers the
    load sends and the PYTHONPATH the proxy needs."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise SystemExit(f"unknown plugin mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.headers = [("x-tenant", "acme")] if mode == "example" else []
        self.python_path = [str(EXAMPLE_SRC)] if mode == "example" else []

    def pool_config(self) -> str:
        """The ``filters`` of the bench pool (indented for ``upstream.bench``)."""
        return "    filters: [bench]\n"

    def top_level(self) -> str:
        if self.mode == "noop":
            return "plugins:\n  - {name: bench, object: 'bench.plugins:NoopFilter'}\n"
        return ("plugins:\n  - name: bench\n    object: 'spooky_example_filters.tenant:TenantFilter'\n"
                "    config: {required: true, tenants: [acme, globex]}\n")
