"""The example plugin package (examples/plugins/spooky-example-filters) installed for real,
with pip, offline, into a directory put on ``sys.path``: its filters are found by entry
point (group ``spooky_trio.filters``) and by ``object:``, and run in the proxy on HTTP/3,
HTTP/2 and HTTP/1.1. Also what ``spooky-trio check`` says of plugin entries that cannot
work (docs/plugins.md), without starting the proxy."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import proxy_yaml, running_proxy

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "examples" / "plugins" / "spooky-example-filters"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example package pip-installed (no network, no build isolation) into a directory on ``sys.path``."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PACKAGE)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert list(target.glob("spooky_example_filters-1.0.0.dist-info"))
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("spooky_example_filters")]:
            del sys.modules[name]


def example_yaml(url: str, certs_dir: Path, key_file: Path, how: str = "entry_point") -> str:
    def where(entry_point: str, obj: str) -> str:
        return f"entry_point: {entry_point}" if how == "entry_point" else f"object: '{obj}'"

    plugins = f"""
plugins:
  - name: rid
    {where("request-id", "spooky_example_filters.request_id:RequestIdFilter")}
  - name: tenant
    {where("tenant-header", "spooky_example_filters.tenant:TenantFilter")}
    config: {{required: true, tenants: [acme, globex], path_prefix: "/t/{{tenant}}"}}
  - name: sign
    {where("hmac-signer", "spooky_example_filters.signer:HmacSigner")}
    config: {{key_file: "{key_file}", key_id: k1}}
"""
    pools = f"""
app:
  route: {{path_prefix: "/"}}
  backends: [{{id: app-1, address: "{url}"}}]
  filters: [rid, tenant, sign]
"""
    return proxy_yaml(pools, certs_dir=certs_dir, extra=plugins)


@pytest.mark.parametrize("how", ["entry_point", "object"])
async def test_the_example_filters_installed_and_running(installed: Path, how: str, certs_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("example-key\n")
    async with run_backend(name="h1") as backend:
        async with running_proxy(example_yaml(backend.url, certs_dir, key_file, how)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    missing = await clients.request(protocol, "/echo")
                    assert (missing.status, missing.body) == (400, b"missing x-tenant header\n"), protocol
                    assert len(missing.header("x-request-id") or "") == 32  # request-id answers every response
                    unknown = await clients.request(protocol, "/echo", [("x-tenant", "initech")])
                    assert unknown.status == 403, protocol
                    ok = await clients.request(protocol, "/echo?x=1", [("x-tenant", "Acme"), ("x-tenant-id", "forged"),
                                                                       ("x-request-id", "client-id-123")], method="POST",
                                               body=b"payload")
                    assert ok.status == 200, (protocol, ok.body)
                    seen = json.loads(ok.body)
                    assert seen["path"] == "/t/acme/echo" and seen["query"] == "x=1"
                    assert ok.echoed("x-tenant-id") == ["acme"]  # the client's forged copy removed
                    assert ok.echoed("x-request-id") == ["client-id-123"] and ok.header("x-request-id") == "client-id-123"
                    assert ok.header("x-tenant-id") == "acme"
                    signature = dict(part.split("=", 1) for part in ok.echoed("x-signature")[0].split(","))
                    assert signature["kid"] == "k1"
                    # signed: the authority the backend got (pass-through: the client's), the rewritten target
                    signed = "\n".join((signature["t"], "POST", ok.echoed("host")[0], "/t/acme/echo?x=1",
                                        hashlib.sha256(b"payload").hexdigest()))
                    expected = hmac.new(b"example-key", signed.encode(), hashlib.sha256).hexdigest()
                    assert signature["sig"] == expected, protocol
                    assert seen["body_len"] == 7  # the body read for the hash still reaches the backend


def check(tmp_path: Path, text: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "spooky_trio", "check", "--config", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=env)


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def col_of(text: str, needle: str) -> int:
    """The 1-based column of the value after ``needle``'s key."""
    line = next(line for line in text.splitlines() if needle in line)
    return line.index(needle) + needle.index(":") + 3


def test_check_finds_the_installed_example_and_refuses_its_bad_config(installed: Path, certs_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("k\n")
    good = example_yaml("http://127.0.0.1:8080", certs_dir, key_file)
    out = check(tmp_path, good, installed)
    assert (out.returncode, out.stdout, out.stderr) == (0, "config OK\n", "")
    bad = good.replace('path_prefix: "/t/{tenant}"', 'path_prefix: "/t/"')
    out = check(tmp_path, bad, installed)
    assert out.returncode == 1
    line, col = line_of(bad, "tenants: [acme"), col_of(bad, 'path_prefix: "/t/"')
    assert out.stderr.splitlines() == [
        f"{tmp_path / 'c.yaml'}: plugins[1].config.path_prefix: line {line} col {col}: plugin 'tenant': refused by the "
        "plugin: must start with '/' and hold {tenant} once"]
