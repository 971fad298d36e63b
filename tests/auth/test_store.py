"""The AuthStore across reloads without sockets (auth/store.py): caches shared by equal
settings, kept while a live generation names them, dropped after; a rewritten CA bundle
makes a new client and a new cache that starts with the old keys."""

from __future__ import annotations

import textwrap
from pathlib import Path

import trio

from spooky_trio.auth.jwks import parse_jwks
from spooky_trio.auth.store import AuthStore
from spooky_trio.config import Config, load_config_text
from tests.support.tokens import jwks, private_key, public_jwk


def config(jwt: str) -> Config:
    return load_config_text(textwrap.dedent(f"""\
        listen: {{tls: {{cert: /c, key: /k}}}}
        upstream:
          api:
            route: {{path_prefix: /}}
            backends: [{{id: a, address: "http://127.0.0.1:8080"}}]
            auth: {{jwt: {jwt}}}
        """))


def jwt_of(cfg: Config):  # type: ignore[no-untyped-def]
    auth = cfg.upstream["api"].auth
    assert auth is not None and auth.jwt is not None
    return auth.jwt


async def test_caches_follow_the_live_generations(nursery: trio.Nursery) -> None:
    store = AuthStore()
    stable = config("{jwks_uri: 'https://idp/jwks'}")
    canary = config("{jwks_uri: 'https://idp/jwks', jwks_cache_secs: 60}")
    a = store.jwks_cache(jwt_of(stable))
    assert store.jwks_cache(jwt_of(config("{jwks_uri: 'https://idp/jwks'}"))) is a  # equal settings: one cache
    a.install(parse_jwks(jwks(public_jwk(private_key("ES256"), "k1"))), 0.0)
    b = store.jwks_cache(jwt_of(canary))
    assert b is not a and b.kids == ["k1"]  # a changed setting starts with the keys it had
    store.follow([stable, canary])
    assert store.jwks_caches() == [a, b]
    store.follow([canary])
    assert store.jwks_caches() == [b]
    store.follow([config("{secret: s}")])
    assert store.jwks_caches() == []
    snapshot = store.snapshot()
    assert snapshot == {"jwks": [], "oidc_discovery": []}


async def test_a_rewritten_ca_bundle_makes_a_new_client_and_cache(tmp_path: Path, certs_dir: Path) -> None:
    store = AuthStore()
    ca = tmp_path / "ca.pem"
    ca.write_bytes((certs_dir / "ca.pem").read_bytes())
    cfg = config(f"{{jwks_uri: 'https://idp/jwks', ca_file: '{ca}'}}")
    first = store.jwks_cache(jwt_of(cfg))
    client, digest = store.client(str(ca))
    assert store.client(str(ca)) == (client, digest)
    import trustme

    ca.write_bytes(trustme.CA().cert_pem.bytes())
    second = store.jwks_cache(jwt_of(cfg))
    assert second is not first and store.client(str(ca))[0] is not client
    store.follow([cfg])
    assert store.jwks_caches() == [second]
