from __future__ import annotations
import json
from pathlib import Path
import trio
from spooky_trio.clients.h3 import H3Client
from tests.support.backends import pattern_bytes, run_backend
from tests.support.proxy import proxy_yaml, running_proxy


def pool(port, certs_dir, protocol="h3"):
    return f"""
    api:
      upstream_protocol: {protocol}
      route:
        path_prefix: "/"
      tls:
        ca_file: "{certs_dir / 'ca.pem'}"
      backends:
        - id: "api-1"
          address: "https://localhost:{port}"
"""


async def test_smoke(certs_dir: Path) -> None:
    async with run_backend(name="h3", tls=True, quic=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        async with running_proxy(proxy_yaml(pool(backend.port, certs_dir), certs_dir=certs_dir)) as server:
            async with H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                for _ in range(3):
                    r = await c.request("GET", "/echo", authority="localhost")
                    assert r.status == 200, r
                    info = json.loads(r.body)
                    assert info["http_version"] == "3", info
                r = await c.request("POST", "/echo?raw=1", body=b"x" * 300000, authority="localhost")
                assert r.status == 200 and r.body == b"x" * 300000
                r = await c.request("GET", f"/bytes/{3 << 20}", authority="localhost")
                assert r.body == pattern_bytes(3 << 20)
