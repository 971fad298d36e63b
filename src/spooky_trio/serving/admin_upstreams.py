"""The control API's backend admin: ``PUT`` and ``DELETE /admin/upstreams/{pool}/backends/{id}``.

``PUT`` with a JSON body ``{"address": ..., "weight": ...}`` (``health_check`` too, like a
config backend; omitted fields take the pool's ``discovery.backend_defaults``) adds the
backend to the pool, or replaces the one with that id: one the admin API added before, or
one from the config or the discovery source (the admin API's wins while it lasts). It is
checked like a config backend (400 with every problem). ``DELETE`` removes a backend the
admin API added (404 when the pool has none with that id; 409 when the id is the config's
or the source's: change it there). The pool must exist in the serving configuration (404).

The answer comes once the live generations use the change (the pool's new set is in the
body). These backends live in memory only: never written to disk, kept by reloads that
keep the pool (dropped with it), lost when the process restarts; ``/admin/runtime`` lists
them under each pool's ``discovery.admin_backends``, and each backend's ``origin`` says
where it comes from. Every change is logged and counted
(``spooky_discovery_updates_total{source="admin"}``). The control API's bearer token, when
configured, is required (``serving/control.py``).
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.parse
from typing import Protocol

from spooky_trio.config.address import parse_backend_address
from spooky_trio.config.backend_entries import EntryError, id_error, parse_entry
from spooky_trio.config.schema import PoolConfig
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.discovery.membership import ADMIN
from spooky_trio.observability.http_server import HttpRequest, HttpResponse
from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.discovery")

#: every path of the backend admin starts so
UPSTREAMS_PREFIX = "/admin/upstreams/"


class UpstreamAdminTarget(Protocol):
    """What the backend admin reads and drives of the server."""

    @property
    def state(self) -> StateStore: ...

    @property
    def generation(self) -> Generation: ...

    @property
    def metrics(self) -> Metrics: ...

    async def follow_generations(self) -> None: ...


def _json(status: int, body: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, indent=2).encode() + b"\n", content_type="application/json")


def _error(status: int, message: str, errors: list[str] | None = None) -> HttpResponse:
    return _json(status, {"result": "invalid" if status == 400 else "refused", "message": message, "errors": errors or [message]})


def _tls_policy_error(server: UpstreamAdminTarget, pool: PoolConfig, address: str) -> str | None:
    """Why a backend at ``address`` cannot join ``pool``, or None: a scheme the pool's
    ``upstream_protocol`` cannot speak; for ``https``, a pool with no TLS backend in
    its config had its TLS policy left unchecked at load (as Spooky); read it now, so a
    missing or broken CA file is this request's 400 rather than a failed generation refresh."""
    try:
        scheme = parse_backend_address(address).scheme
    except ValueError:
        return None  # parse_entry reported it
    mismatch = pool.scheme_error(scheme)
    if mismatch is not None:
        return mismatch
    if scheme != "https" or pool.uses_tls():
        return None
    policy = pool.tls if pool.tls is not None else server.generation.config.upstream_tls
    try:
        server.state.client_tls.get(verify=policy.verify_certificates, ca_file=policy.ca_file, ca_dir=policy.ca_dir)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"the pool's upstream TLS policy cannot be used for an https backend: {exc}"
    return None


def split_path(path: str) -> tuple[str, str] | None:
    """(pool, backend id) of ``/admin/upstreams/{pool}/backends/{id}`` (percent-decoded), or None."""
    parts = path[len(UPSTREAMS_PREFIX):].split("/")
    if len(parts) != 3 or parts[1] != "backends" or not parts[0] or not parts[2]:
        return None
    return urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[2])


async def handle_upstreams(server: UpstreamAdminTarget, request: HttpRequest) -> HttpResponse:
    """Answer one request under :data:`UPSTREAMS_PREFIX` (module docstring)."""
    target = split_path(request.path)
    if target is None:
        return HttpResponse(404, b"not found: use /admin/upstreams/{pool}/backends/{id}\n")
    if request.method not in ("PUT", "DELETE"):
        return HttpResponse(405, b"method not allowed\n", headers=(("allow", "PUT, DELETE"),))
    pool_name, backend_id = target
    pool = server.generation.pools.get(pool_name)
    if pool is None:
        return _error(404, f"no pool named {pool_name!r} in the serving configuration")
    bad_id = id_error(backend_id)
    if bad_id is not None:
        return _error(400, f"backend id: {bad_id}")
    discovery = server.state.discovery
    if request.method == "PUT":
        try:
            data: object = json.loads(request.body)
        except ValueError:
            return _error(400, "the body must be a JSON object like {\"address\": \"http://10.0.0.7:8080\", \"weight\": 100}")
        try:
            entry = parse_entry(data, backend_id=backend_id)
        except EntryError as exc:
            return _error(400, f"backend {backend_id!r} of pool {pool_name!r} is not valid", [str(i) for i in exc.issues])
        unusable = _tls_policy_error(server, pool.config, entry.address)
        if unusable is not None:
            return _error(400, unusable)
        change = discovery.put(pool_name, entry)
        result = "added" if change.added else "updated" if change else "unchanged"
    else:
        removed = discovery.delete(pool_name, backend_id)
        if removed is None:
            others = {backend.id: backend.origin for backend in pool.backends}
            if backend_id in others:
                return _error(409, f"backend {backend_id!r} of pool {pool_name!r} comes from {others[backend_id]}, "
                                   "not the admin API: change it there")
            return _error(404, f"pool {pool_name!r} has no backend {backend_id!r} added by the admin API")
        change, result = removed, "removed"
    for line in change.lines():
        log.info("pool %s (admin API): %s", pool_name, line)
    if change:
        server.metrics.discovery_update(pool_name, ADMIN)
        await server.follow_generations()  # the live generations use it before the answer
    current = server.generation.pools.get(pool_name)
    backends = [] if current is None else [
        {"id": b.id, "address": f"{b.target.scheme}://{b.target.host}:{b.target.port}", "weight": b.weight, "origin": b.origin}
        for b in current.backends]
    return _json(200, {"result": result, "pool": pool_name, "backend": backend_id, "backends": backends})
