"""Fuzz config loading: YAML bytes -> ``load_config_text``.

Invariant: for any input, ``load_config_text`` either returns a :class:`Config` or raises
:class:`ConfigError` (every issue with a message); no other exception escapes. A config that
loads is usable by the runtime without surprises: every pool's routing entry builds, its
``load_balancing.key`` is accepted by ``key_source`` (the validator's promise) and a
``host_policy.host`` is printable ASCII without whitespace (it is sent as the upstream
Host / ``:authority`` of every request).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run

with instrumented(__name__):
    from spooky_trio.balancing.keys import key_source
    from spooky_trio.config import ConfigError, load_config_text
    from spooky_trio.routing.table import RoutingTable


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        config = load_config_text(text, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.issues and all(issue.message for issue in exc.issues)
        return
    RoutingTable.from_pools(config.upstream)
    for pool in config.upstream.values():
        lb = pool.effective_load_balancing(config.load_balancing)
        if lb.key is not None:
            key_source(lb.key)
        if pool.host_policy.host is not None:
            host = pool.host_policy.host
            host.encode("ascii")  # upstream_authority encodes it for every request
            assert host.isprintable() and not any(c.isspace() for c in host), host


if __name__ == "__main__":
    run(test_one_input)
