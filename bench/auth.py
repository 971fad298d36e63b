"""The auth variants of the spooky target: ``-t spooky+api_key`` and ``-t spooky+jwt``.

* ``api_key``: the pool checks ``x-api-key`` against three keys (every one compared, as
  always); the load sends the second.
* ``jwt``: an RS256 token (2048-bit key, ``kid``) verified with a JWK Set the proxy fetched
  once at startup from a local ``python -m http.server`` (``jwks_uri`` on loopback HTTP), plus
  ``issuer``, ``audience`` and ``required_scopes``: the cost of a request whose key is cached.

docs/performance.md ("Auth") reports both against the plain ``spooky`` target.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bench.targets import free_port, stop, wait_tcp

MODES = ("api_key", "jwt")
_KEYS = ("bench-key-one-0123456789", "bench-key-two-0123456789", "bench-key-three-012345678")


class BenchAuth:
    """One auth mode: its pool config, the request headers the load sends, and for ``jwt`` the
    JWK Set server (started and stopped with the proxy, by pid)."""

    def __init__(self, mode: str, workdir: Path) -> None:
        if mode not in MODES:
            raise SystemExit(f"unknown auth mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.workdir = workdir
        self.port = 0
        self._server: subprocess.Popen | None = None
        if mode == "api_key":
            self.headers = [("x-api-key", _KEYS[1])]
            return
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        claims = {"sub": "bench", "iss": "https://idp.bench/", "aud": "bench", "scope": "read", "exp": int(time.time()) + 86400}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "bench"})
        self.headers = [("authorization", f"Bearer {token}")]

    def pool_config(self) -> str:
        """The ``auth`` block of the bench pool (indented for ``upstream.bench``)."""
        if self.mode == "api_key":
            return f"    auth:\n      api_key: {{keys: {json.dumps(list(_KEYS))}}}\n"
        return (f"    auth:\n      jwt:\n        jwks_uri: \"http://127.0.0.1:{self.port}/jwks.json\"\n"
                "        issuer: \"https://idp.bench/\"\n        audience: bench\n      required_scopes: [read]\n")

    def start(self) -> None:
        if self.mode != "jwt" or self._server is not None:
            return
        directory = self.workdir / "jwks"
        directory.mkdir(exist_ok=True)
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        (directory / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "use": "sig"}]}))
        self.port = free_port()
        log = open(self.workdir / "jwks-server.log", "wb")
        self._server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory),
                                         str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        wait_tcp(self.port, self._server, what="JWKS server")

    def stop(self) -> None:
        stop(self._server)
        self._server = None
