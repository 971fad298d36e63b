"""What the request view shows beyond the head (docs/plugins.md, ``Request``): the verified
JWT's claims on every protocol, the SNI per connection, and a verified client certificate's
subject on the TCP listener (HTTP/2, HTTP/1.1; QUIC clients present none)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trustme

from tests.plugins.test_filters_e2e import plugins_yaml
from tests.support.backends import run_backend
from tests.support.bootstrap import client_context
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy
from tests.support.tokens import claims, hs256


def seen(reply_headers: list[str]) -> dict[str, object]:
    assert len(reply_headers) == 1
    value = json.loads(reply_headers[0])
    assert isinstance(value, dict)
    return value


async def test_the_view_has_the_verified_claims(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend:
        pools = f"""
app:
  route: {{path_prefix: "/"}}
  backends: [{{id: app-1, address: "{backend.url}"}}]
  auth: {{jwt: {{secret: s3cret}}}}
  filters: [ctx]
"""
        token = hs256("s3cret", claims(sub="alice", role="admin"))
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir, extra=plugins_yaml("ctx=Context"))) as server, \
                proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                reply = await clients.request(protocol, "/echo", [("authorization", f"Bearer {token}")])
                assert reply.status == 200, protocol
                got = seen(reply.echoed("x-context"))["claims"]
                assert isinstance(got, dict) and (got["sub"], got["role"]) == ("alice", "admin"), protocol
                # a forged claim in a header means nothing: the view shows only what auth verified
                refused = await clients.request(protocol, "/echo")
                assert refused.status == 401


async def test_the_view_has_the_client_certificate_subject(certs_dir: Path, tmp_path: Path) -> None:
    client_ca = trustme.CA(organization_name="client CA")
    ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    alice = client_ca.issue_cert("alice@example.com", common_name="alice", organization_name="Example Corp", organization_unit_name="eng")
    port = free_udp_port()
    async with run_backend(name="h1") as backend:
        config = proxy_yaml(f"""
app:
  route: {{path_prefix: "/"}}
  backends: [{{id: app-1, address: "{backend.url}"}}]
  filters: [ctx]
""", certs_dir=certs_dir, port=port, extra=plugins_yaml("ctx=Context"))
        tls = f"  tls:\n    cert: {certs_dir / 'localhost.pem'}\n    key: {certs_dir / 'localhost.key'}\n"
        config = config.replace(tls, tls + f"    client_auth: {{enabled: true, require_client_cert: false, ca_file: {ca_file}}}\n")
        async with running_proxy(config):
            for http2 in (True, False):
                async with httpx.AsyncClient(http2=http2, http1=not http2, verify=client_context(certs_dir, cert=alice)) as client:
                    reply = await client.get(f"https://localhost:{port}/echo")
                    context = seen([v for n, v in json.loads(reply.content)["headers"] if n == "x-context"])
                    assert (context["subject"], context["sni"]) == ("CN=alice,OU=eng,O=Example Corp", "localhost"), http2
                async with httpx.AsyncClient(http2=http2, http1=not http2, verify=client_context(certs_dir)) as client:
                    reply = await client.get(f"https://localhost:{port}/echo")
                    context = seen([v for n, v in json.loads(reply.content)["headers"] if n == "x-context"])
                    assert context["subject"] is None, http2
