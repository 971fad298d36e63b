"""Round-robin, weighted random, least-connections and latency-aware, deterministically."""

from __future__ import annotations

import collections
import random

import pytest

from spooky_trio.balancing import LatencyAware, LeastConnections, RoundRobin, WeightedRandom, make_balancer
from tests.balancing.helpers import Load, loads, request

REQ = request()


def picks(balancer, candidates, n):  # type: ignore[no-untyped-def]
    return [balancer.choose(candidates, REQ) for _ in range(n)]


class TestRoundRobin:
    def test_equal_weights_rotate_in_order(self) -> None:
        rr = RoundRobin([1, 1, 1], loads(3))
        assert picks(rr, [0, 1, 2], 6) == [0, 1, 2, 0, 1, 2]

    def test_weights_exact_over_every_cycle_and_smooth(self) -> None:
        rr = RoundRobin([1, 2, 3], loads(3))
        for _ in range(5):
            cycle = picks(rr, [0, 1, 2], 6)
            assert collections.Counter(cycle) == {0: 1, 1: 2, 2: 3}
        # smooth: the heavy backend's three picks are not consecutive
        assert picks(RoundRobin([1, 2, 3], loads(3)), [0, 1, 2], 6) == [2, 1, 0, 2, 1, 2]

    def test_large_weights_keep_their_ratio(self) -> None:
        rr = RoundRobin([100, 50], loads(2))
        assert collections.Counter(picks(rr, [0, 1], 150)) == {0: 100, 1: 50}

    def test_unavailable_backend_gets_nothing_and_no_catch_up_burst(self) -> None:
        rr = RoundRobin([1, 1, 1], loads(3))
        assert set(picks(rr, [0, 2], 10)) == {0, 2}
        # back in the set: it takes its normal share, not ten picks in a row
        assert collections.Counter(picks(rr, [0, 1, 2], 9)) == {0: 3, 1: 3, 2: 3}

    def test_single_candidate(self) -> None:
        assert picks(RoundRobin([5, 1], loads(2)), [1], 3) == [1, 1, 1]


class TestWeightedRandom:
    def test_seeded_sequence_is_reproducible(self) -> None:
        a = WeightedRandom([1, 2, 3], loads(3), random.Random(7))
        b = WeightedRandom([1, 2, 3], loads(3), random.Random(7))
        assert picks(a, [0, 1, 2], 50) == picks(b, [0, 1, 2], 50)

    def test_shares_follow_weights(self) -> None:
        balancer = WeightedRandom([1, 2, 3], loads(3), random.Random(1))
        counts = collections.Counter(picks(balancer, [0, 1, 2], 60000))
        for index, weight in enumerate([1, 2, 3]):
            assert counts[index] / 60000 == pytest.approx(weight / 6, abs=0.01)

    def test_only_candidates_are_drawn(self) -> None:
        balancer = WeightedRandom([1, 100, 1], loads(3), random.Random(3))
        assert set(picks(balancer, [0, 2], 200)) == {0, 2}

    def test_draw_boundaries_map_to_weights(self) -> None:
        class Scripted(random.Random):
            def __init__(self, values: list[int]) -> None:
                super().__init__()
                self.values = values

            def randrange(self, stop: int) -> int:  # type: ignore[override]
                assert stop == 6
                return self.values.pop(0)

        balancer = WeightedRandom([1, 2, 3], loads(3), Scripted([0, 1, 2, 3, 5]))
        assert picks(balancer, [0, 1, 2], 5) == [0, 1, 1, 2, 2]


class TestLeastConnections:
    def test_fewest_in_flight_wins(self) -> None:
        state = [Load(in_flight=3), Load(in_flight=1), Load(in_flight=2)]
        assert LeastConnections([1, 1, 1], state).choose([0, 1, 2], REQ) == 1

    def test_ties_go_to_config_order(self) -> None:
        state = [Load(in_flight=2), Load(in_flight=1), Load(in_flight=1)]
        assert LeastConnections([1, 1, 1], state).choose([0, 1, 2], REQ) == 1
        assert LeastConnections([1, 1, 1], loads(3)).choose([1, 2], REQ) == 1

    def test_weight_aware(self) -> None:
        # (in_flight + 1) / weight: 4/2 = 2.0 beats 3/1 = 3.0 although it has more in flight
        state = [Load(in_flight=2), Load(in_flight=3)]
        assert LeastConnections([1, 2], state).choose([0, 1], REQ) == 1
        state = [Load(in_flight=1), Load(in_flight=3)]  # 2/1 == 4/2: tie, config order
        assert LeastConnections([1, 2], state).choose([0, 1], REQ) == 0
        state = [Load(in_flight=2), Load(in_flight=4)]
        assert LeastConnections([1, 3], state).choose([0, 1], REQ) == 1  # 3/1 vs 5/3
        # idle backends do not tie whatever their weight: the heavy one wins
        assert LeastConnections([1, 3], loads(2)).choose([0, 1], REQ) == 1

    def test_in_flight_settles_in_proportion_to_weights(self) -> None:
        state = loads(3)
        balancer = LeastConnections([1, 2, 3], state)
        for _ in range(60):
            state[balancer.choose([0, 1, 2], REQ)].in_flight += 1
        assert [s.in_flight for s in state] == [10, 20, 30]

    def test_skips_non_candidates(self) -> None:
        state = [Load(in_flight=0), Load(in_flight=5)]
        assert LeastConnections([1, 1], state).choose([1], REQ) == 1


class TestLatencyAware:
    def test_unsampled_idle_backends_are_probed_first_in_order(self) -> None:
        state = [Load(latency=0.001), Load(), Load()]
        assert LatencyAware([1, 1, 1], state).choose([0, 1, 2], REQ) == 1
        state[1].in_flight = 1  # its probe is outstanding: the next unsampled one goes
        assert LatencyAware([1, 1, 1], state).choose([0, 1, 2], REQ) == 2

    def test_lowest_latency_wins_when_idle(self) -> None:
        state = [Load(latency=0.050), Load(latency=0.010), Load(latency=0.030)]
        assert LatencyAware([1, 1, 1], state).choose([0, 1, 2], REQ) == 1

    def test_in_flight_pressure_moves_traffic_off_a_fast_backend(self) -> None:
        state = [Load(latency=0.030), Load(latency=0.010, in_flight=3)]
        # 0.030 * 1 = 0.030 < 0.010 * 4 = 0.040
        assert LatencyAware([1, 1], state).choose([0, 1], REQ) == 0
        state[1].in_flight = 1  # 0.010 * 2 = 0.020
        assert LatencyAware([1, 1], state).choose([0, 1], REQ) == 1

    def test_weight_divides_the_score(self) -> None:
        state = [Load(latency=0.010), Load(latency=0.015)]
        assert LatencyAware([1, 2], state).choose([0, 1], REQ) == 1

    def test_busy_unsampled_backend_scored_with_the_mean(self) -> None:
        # backend 1 has no sample but one request in flight: mean latency 0.02 * 2 = 0.04
        state = [Load(latency=0.030, in_flight=1), Load(in_flight=1), Load(latency=0.010, in_flight=5)]
        assert LatencyAware([1, 1, 1], state).choose([0, 1, 2], REQ) == 1

    def test_ties_go_to_config_order(self) -> None:
        state = [Load(latency=0.02), Load(latency=0.02)]
        assert LatencyAware([1, 1], state).choose([0, 1], REQ) == 0


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("round-robin", RoundRobin),
        ("round_robin", RoundRobin),
        ("random", WeightedRandom),
        ("least_connections", LeastConnections),
        ("latency-aware", LatencyAware),
    ],
)
def test_factory_builds_each_kind(kind: str, cls: type) -> None:
    assert isinstance(make_balancer(kind, None, ids=["a", "b"], weights=[1, 1], loads=loads(2)), cls)


def test_factory_rejects_unknown_kind_and_bad_weights() -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_balancer("fastest", None, ids=["a"], weights=[1], loads=loads(1))
    with pytest.raises(ValueError, match="weight"):
        RoundRobin([0], loads(1))
