"""The traffic-policy steps of a generation's chain, grouped by where they go (extensions.md
section 0; docs/traffic-policy.md); ``build_chain`` (``proxy/filters.py``) places each group.

```
route -> [route_answer] -> auth ... external_auth -> (plugins) -> [fault] -> [rewrite] -> [split]
      -> body_limit -> admission -> balance -> [mirror] -> forward
```

Each step is in the chain only when some pool of the generation uses it, so a config without
traffic policy pays nothing; inside, a step costs one dict lookup for a pool without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from spooky_trio.core.generation import Generation
from spooky_trio.core.shadows import ShadowTasks
from spooky_trio.proxy.chain import Filter, SyncFilter
from spooky_trio.proxy.faults import Fault
from spooky_trio.proxy.mirror import Mirror
from spooky_trio.proxy.rewrites import Rewrite
from spooky_trio.proxy.route_answers import RouteAnswer, answers_locally
from spooky_trio.proxy.split import Split, has_split

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.upstream import UpstreamPool


@attrs.frozen
class TrafficSteps:
    """The steps, by place: right after ``route``; after the plugin request hooks (before
    ``body_limit``); right before ``forward``."""

    after_route: list[Filter | SyncFilter]
    before_admission: list[Filter | SyncFilter]
    before_forward: list[Filter | SyncFilter]


def traffic_steps(generation: Generation, *, upstream: UpstreamPool, shadows: ShadowTasks, metrics: Metrics | None) -> TrafficSteps:
    """The traffic-policy steps ``generation``'s pools use (module docstring)."""
    config = generation.config
    counters = metrics.traffic if metrics is not None else None
    policies = [pool.traffic_policy for pool in config.upstream.values() if pool.traffic_policy is not None]
    after_route: list[Filter | SyncFilter] = [RouteAnswer(config)] if answers_locally(config) else []
    before_admission: list[Filter | SyncFilter] = []
    if any(p.fault is not None and not p.answers_locally for p in policies):
        before_admission.append(Fault(config, generation.number, counters))
    rewrite = Rewrite(config)
    if rewrite.pools:
        before_admission.append(rewrite)
    if has_split(config):
        before_admission.append(Split(generation, counters))
    before_forward: list[Filter | SyncFilter] = []
    if any(p.mirror is not None and not p.answers_locally for p in policies):
        before_forward.append(Mirror(generation, upstream, shadows, counters))
    return TrafficSteps(after_route, before_admission, before_forward)
