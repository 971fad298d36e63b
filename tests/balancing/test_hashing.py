"""Hash keys, the weighted ring's movement bounds, consistent-hash and sticky-cid."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from spooky_trio.balancing import ConsistentHash, HashRing, StickyCid, make_balancer
from spooky_trio.balancing.keys import default_key, hash64, key_source, request_key
from tests.balancing.helpers import loads, request

KEYS = [f"user-{i}".encode() for i in range(20000)]


def key(spec: str | None, r: object) -> bytes:
    """The bytes a balancer keyed on ``spec`` hashes for ``r`` (fallback included)."""
    return request_key(key_source(spec), r)  # type: ignore[arg-type]


class TestKeys:
    """Spooky's extraction (http/request_keys.py, shared with the scoped rate limits), as the
    bytes the balancer hashes; only ``cid`` and ``peer_ip`` differ from the rate limits'."""

    def test_header_is_case_insensitive_and_reads_the_first_field(self) -> None:
        assert key("header:X-User", request(headers=[(b"x-user", b"alice")])) == b"alice"
        # Spooky reads one field, not the joined list: a second x-user cannot move the key
        assert key("header:x-user", request(headers=[(b"x-user", b"a"), (b"other", b"z"), (b"x-user", b"b")])) == b"a"
        assert key_source("header:x-user")(request()) is None
        # a value that is not visible ASCII yields nothing (Spooky's to_str): the fallback
        assert key("header:x-user", request(headers=[(b"x-user", b"caf\xc3\xa9")], authority=b"h.example")) == b"h.example"

    def test_cookie_from_any_cookie_header(self) -> None:
        assert key("cookie:sid", request(headers=[(b"cookie", b"a=1; sid=abc; b=2")])) == b"abc"
        assert key("cookie:SID", request(headers=[(b"cookie", b"a=1"), (b"cookie", b"Sid= q ")])) == b"q"  # trimmed
        assert key("cookie:sid", request(headers=[(b"cookie", b'sid="q"')])) == b'"q"'  # quotes kept, as Spooky
        assert key_source("cookie:sid")(request(headers=[(b"cookie", b"xsid=1; sid2=2")])) is None
        assert key_source("cookie:sid")(request(headers=[(b"cookie", b"flag; sid=1")])) is None  # Spooky's parser stops

    def test_query_parameter_is_not_decoded(self) -> None:
        assert key("query:u", request(path=b"/a?x=1&u=b%20c&u=second")) == b"b%20c"
        assert key("query:U", request(path=b"/a?u=&u=b+c")) == b"b+c"  # empty values skipped
        assert key_source("query:u")(request(path=b"/a?uu=1")) is None
        assert key_source("query:u")(request(path=b"/a")) is None

    def test_plain_sources(self) -> None:
        r = request(path=b"/p/q?x=1", authority=b"Example.COM:443", method=b"POST", cid=b"\x01\xff")
        assert key("path", r) == b"/p/q"
        assert key("authority", r) == b"Example.COM:443"  # as sent, as Spooky
        assert key("method", r) == b"POST"
        assert key("cid", r) == b"\x01\xff"  # the connection ID's own bytes
        assert key_source("cid")(request()) is None

    def test_fallback_authority_then_full_path_then_method(self) -> None:
        assert default_key(request(authority=b"a.example")) == b"a.example"
        assert default_key(request(authority=b"", path=b"/x?y")) == b"/x?y"
        assert default_key(request(authority=b"", path=b"", method=b"GET")) == b"GET"
        assert key(None, request(authority=b"a.example")) == b"a.example"
        # a configured source the request lacks falls back to the default chain
        assert key("header:x-user", request(authority=b"h.example")) == b"h.example"

    def test_spooky_key_specs(self) -> None:
        # spooky-head.md section 2: sticky-cid = cid, client_ip = peer_ip (the transport
        # peer, never X-Forwarded-For), bearer_token; specs and names case-insensitive
        r = request(
            client=("198.51.100.7", 4433),
            cid=b"\x07",
            headers=[(b"x-forwarded-for", b"203.0.113.9"), (b"authorization", b"Bearer  tok-1 "), (b"cookie", b"Session=s1")],
            path=b"/a?User=u1",
        )
        assert key("peer_ip", r) == key(" CLIENT_IP ", r) == b"198.51.100.7"
        assert key("Sticky-CID", r) == key("cid", r) == b"\x07"
        assert key("bearer_token", r) == b"tok-1"
        assert key("cookie:session", r) == key("Cookie:SESSION", r) == b"s1"
        assert key("query:user", r) == b"u1"
        assert key("HEADER:Authorization", r) == b"Bearer  tok-1 "
        # not a bearer token, or no Authorization: the source yields nothing (default chain)
        assert key_source("bearer_token")(request(headers=[(b"authorization", b"Basic abc")])) is None
        assert key_source("bearer_token")(request(headers=[(b"authorization", b"Bearer ")])) is None
        assert key_source("bearer_token")(request()) is None

    def test_invalid_key_rejected(self) -> None:
        for bad in ("header:", "body", "cookie", "header :x"):
            with pytest.raises(ValueError):
                key_source(bad)

    def test_hash_is_stable_across_processes(self) -> None:
        # Python's hash() is salted per process; ours must not be
        code = "from spooky_trio.balancing.keys import hash64; print(hash64(b'user-42'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert int(out.stdout) == hash64(b"user-42")


def owners(ring: HashRing, candidates: list[int]) -> list[int]:
    return [ring.lookup(key, candidates) for key in KEYS]


class TestRing:
    def test_equal_weights_share_evenly(self) -> None:
        ring = HashRing([f"b{i}" for i in range(5)], [1] * 5)
        counts = collections.Counter(owners(ring, list(range(5))))
        for share in counts.values():
            assert share / len(KEYS) == pytest.approx(0.2, abs=0.04)

    def test_weights_scale_shares(self) -> None:
        ring = HashRing(["a", "b", "c"], [100, 200, 300])
        counts = collections.Counter(owners(ring, [0, 1, 2]))
        for index, weight in enumerate([1, 2, 3]):
            assert counts[index] / len(KEYS) == pytest.approx(weight / 6, abs=0.04)

    @pytest.mark.parametrize("leaving", [0, 3, 9])
    def test_one_of_n_leaving_moves_only_its_keys(self, leaving: int) -> None:
        n = 10
        ring = HashRing([f"b{i}" for i in range(n)], [1] * n)
        before = owners(ring, list(range(n)))
        after = owners(ring, [i for i in range(n) if i != leaving])
        moved = [k for k, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
        # exactly the leaver's keys move (about 1/N of them), spread over several others
        assert all(before[k] == leaving for k in moved)
        assert before.count(leaving) == len(moved)
        assert len(moved) / len(KEYS) == pytest.approx(1 / n, abs=0.04)
        assert len({after[k] for k in moved}) >= n // 2
        # and they come back when it returns
        assert owners(ring, list(range(n))) == before

    def test_removing_a_backend_from_config_keeps_other_keys(self) -> None:
        # points are placed by id, not position: dropping "b1" from the list moves only its keys
        full = HashRing(["b0", "b1", "b2", "b3"], [1, 1, 1, 1])
        reduced = HashRing(["b0", "b2", "b3"], [1, 1, 1])
        names_full, names_reduced = ["b0", "b1", "b2", "b3"], ["b0", "b2", "b3"]
        before = [names_full[i] for i in owners(full, [0, 1, 2, 3])]
        after = [names_reduced[i] for i in owners(reduced, [0, 1, 2])]
        assert all(b == "b1" for b, a in zip(before, after, strict=True) if a != b)

    def test_adding_a_backend_takes_about_one_over_n(self) -> None:
        small = HashRing(["b0", "b1", "b2"], [1, 1, 1])
        big = HashRing(["b0", "b1", "b2", "b3"], [1, 1, 1, 1])
        before, after = owners(small, [0, 1, 2]), owners(big, [0, 1, 2, 3])
        moved = [k for k in range(len(KEYS)) if before[k] != after[k]]
        assert all(after[k] == 3 for k in moved)
        assert len(moved) / len(KEYS) == pytest.approx(1 / 4, abs=0.05)

    def test_all_but_one_unavailable(self) -> None:
        ring = HashRing(["a", "b", "c"], [1, 1, 1])
        assert set(owners(ring, [2])) == {2}


class TestConsistentHash:
    def test_same_key_same_backend_and_keys_spread(self) -> None:
        balancer = ConsistentHash([1, 1, 1], loads(3), ["a", "b", "c"], key_source("header:x-user"))
        chosen = {}
        for user in range(30):
            r = request(headers=[(b"x-user", f"u{user}".encode())])
            picks = {balancer.choose([0, 1, 2], r) for _ in range(5)}
            assert len(picks) == 1
            chosen[user] = picks.pop()
        assert set(chosen.values()) == {0, 1, 2}

    def test_factory_wires_the_key(self) -> None:
        balancer = make_balancer("consistent_hash", "query:t", ids=["a", "b"], weights=[1, 1], loads=loads(2))
        assert isinstance(balancer, ConsistentHash)
        assert balancer.request_key(request(path=b"/?t=tenant")) == b"tenant"


class TestStickyCid:
    def test_one_connection_id_one_backend(self) -> None:
        balancer = StickyCid([1, 1, 1], loads(3), ["a", "b", "c"])
        for i in range(50):
            cid = hash64(str(i).encode()).to_bytes(8, "big")
            assert len({balancer.choose([0, 1, 2], request(cid=cid, path=f"/{n}".encode())) for n in range(10)}) == 1

    def test_connections_spread_by_weight(self) -> None:
        balancer = StickyCid([1, 1, 3], loads(3), ["a", "b", "c"])
        counts = collections.Counter(balancer.choose([0, 1, 2], request(cid=hash64(str(i).encode()).to_bytes(8, "big"))) for i in range(5000))
        assert counts[2] / 5000 == pytest.approx(0.6, abs=0.06)

    def test_without_cid_falls_back_to_key_then_client_address(self) -> None:
        balancer = StickyCid([1, 1], loads(2), ["a", "b"])
        assert balancer.request_key(request(client=("198.51.100.7", 4433))) == b"addr:198.51.100.7:4433"
        keyed = make_balancer("sticky-cid", "header:x-user", ids=["a", "b"], weights=[1, 1], loads=loads(2))
        assert keyed.request_key(request(headers=[(b"x-user", b"u")])) == b"key:u"  # type: ignore[attr-defined]
        assert keyed.request_key(request(client=("::1", 9))) == b"addr:::1:9"  # type: ignore[attr-defined]
        assert keyed.request_key(request(cid=b"\xaa")) == b"cid:\xaa"  # type: ignore[attr-defined]
