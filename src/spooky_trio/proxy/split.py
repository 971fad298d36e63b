"""The ``split`` step: traffic_policy ``split`` of the pool the route chose picks the pool
that serves (extensions.md section 1).

After the request rewrites and before admission (section 0): from then on the serving
pool's limits, health, balancing, host policy, forwarded headers and TLS apply (admission,
balance, forward read ``ctx.serving_pool``), while the policy (auth, rate limits, faults,
rewrites, mirror) stays the route pool's (``ctx.route_pool``). A split target's own
``traffic_policy`` is not applied to the requests split to it.

Each request draws a bucket in 0..9999 and goes to the first ``split`` entry whose
cumulative share (percent x 100) is above it; the rest stay. The bucket is

* with ``split_key`` (a Spooky key spec: ``cookie:session``, ``header:x-user``...): a stable
  BLAKE2b hash of the key's value (``split:`` + value), the same in every process and after
  every restart or reload, so one key always lands on the same side while the percents do
  not change (raising a percent only moves keys from staying to the split, never back);
  a request without the key is drawn at random (never Spooky's fallback: it would send
  every keyless request to one side);
* otherwise a draw of the generation's seeded RNG of the split (``proxy/draws.py``).

The decision is in the access log (``split=<route pool>-><serving pool>``, the same name
twice for a request that stayed) and in ``spooky_traffic_split_total{upstream,target}``.
"""

from __future__ import annotations

import hashlib

from spooky_trio.config import Config
from spooky_trio.core.generation import Generation, PoolRuntime
from spooky_trio.http.request_keys import KeyReader, key_reader, parse_key_spec
from spooky_trio.observability.traffic_metrics import TrafficCounters
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.draws import basis_points, policy_rng


def key_bucket(key: str) -> int:
    """The split bucket (0..9999) of a key's value: stable across processes and runs."""
    digest = hashlib.blake2b(b"split:" + key.encode("latin-1", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


class PoolSplit:
    """A pool's ``split``, compiled: (cumulative basis points, target) in order."""

    __slots__ = ("own", "steps", "key", "labels")

    def __init__(self, own: PoolRuntime, steps: list[tuple[int, PoolRuntime]], key: KeyReader | None) -> None:
        self.own = own
        self.steps = steps
        self.key = key
        #: serving pool name -> the access log's ``split`` value
        self.labels = {pool.name: f"{own.name}->{pool.name}" for pool in [own, *(t for _, t in steps)]}

    def choose(self, bucket: int) -> PoolRuntime:
        for bound, target in self.steps:
            if bucket < bound:
                return target
        return self.own


class Split:
    """The split step (module docstring); in the chain only when a pool has a ``split``."""

    name = "split"

    def __init__(self, generation: Generation, counters: TrafficCounters | None) -> None:
        config = generation.config
        self.pools: dict[str, PoolSplit] = {}
        for name, pool in config.upstream.items():
            policy = pool.traffic_policy
            if policy is None or not policy.split or policy.answers_locally:
                continue
            steps: list[tuple[int, PoolRuntime]] = []
            total = 0
            for entry in policy.split:
                total += basis_points(entry.percent)
                steps.append((total, generation.pools[entry.pool]))
            key = key_reader(parse_key_spec(policy.split_key)) if policy.split_key is not None else None
            self.pools[name] = PoolSplit(generation.pools[name], steps, key)
        self.rng = policy_rng(config, generation.number, "split")
        self.counters = counters

    def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        split = self.pools.get(pool)
        if split is None:
            return None
        key = split.key(ctx.request) if split.key is not None else None
        target = split.choose(key_bucket(key) if key is not None else self.rng.randrange(10000))
        ctx.serving_pool = target
        ctx.pool = target.name
        ctx.split = split.labels[target.name]
        if self.counters is not None:
            self.counters.splits[(pool, target.name)] += 1
        return None


def has_split(config: Config) -> bool:
    """Some pool of ``config`` splits (the step is in the chain only then)."""
    return any(p.traffic_policy is not None and p.traffic_policy.split and not p.traffic_policy.answers_locally
               for p in config.upstream.values())
