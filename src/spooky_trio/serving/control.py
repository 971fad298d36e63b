"""The metrics endpoint and the control API, built on :mod:`.http_server`.

Control API (``observability.control_api``):

* ``GET health_path``: 200 while the process serves (liveness);
* ``GET ready_path``: 200 once every listener is bound and the server is not draining,
  503 otherwise;
* ``GET runtime_path``: JSON snapshot (generation, listeners, pools and backends with their
  circuit breaker, connection counts, overload state: inflight, admission limit, brownout,
  route queues, retry budgets; scoped rate limits: rules with their decisions and buckets,
  the shared stores' state (never the store's password); uptime, version; the auth settings
  per pool with every secret as ``***``, the JWKS caches and OIDC discovery documents; each
  pool's route matchers and traffic policy in words and the mirror copies in flight);
* ``POST reload_certs_path``: re-read listener certificates and client-auth CAs for new
  handshakes (200 + JSON summary; 422 + the error, old material kept, when a file is bad);
* ``POST restart_path``: 202, then graceful drain and exit status 75 (``EXIT_RESTART``);
* ``POST reload_path``: re-read the config file and apply it (serving/reload.py);
* ``PUT`` / ``DELETE /admin/upstreams/{pool}/backends/{id}``: add, replace or remove a
  backend in memory (``serving/admin_upstreams.py``);
* ``GET /admin/config``: generation, sha256 of its source, applied time, source, canary and
  history; ``POST /admin/config/validate`` (YAML body: dry run, errors or the diff),
  ``POST /admin/config/apply`` (YAML body; ``?persist=true`` writes the file,
  ``?canary_percent=N`` stages it for N % of new requests), ``POST /admin/config/rollback``
  (drop the canary, or back to the previous generation; ``?persist=true``),
  ``POST /admin/config/promote`` (the canary takes every request; ``?persist=true``).
  Failures answer 400 (not a config document) / 409 (not possible now) / 422 (invalid,
  or a listener cannot bind) with every error: key path, line, column, message.

Everything under ``/admin/`` (and the runtime, restart and reload paths wherever they are) needs ``Authorization: Bearer <auth_token>`` when a token is
configured: none gives 401 (with ``WWW-Authenticate: Bearer``), a wrong one 403.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from spooky_trio.auth.describe import describe_auth
from spooky_trio.config import Config, ControlApiConfig, MetricsConfig
from spooky_trio.config.describe_traffic import describe_traffic
from spooky_trio.core.activity import Activity
from spooky_trio.core.generation import Generation
from spooky_trio.core.generations import GenerationSet
from spooky_trio.core.state import StateStore
from spooky_trio.ingress.bootstrap import BootstrapListener
from spooky_trio.ingress.identities import IdentityError
from spooky_trio.ingress.quic import QuicListener
from spooky_trio.ingress.tls import TlsSetupError
from spooky_trio.observability.metrics import Metrics
from spooky_trio.serving.admin_upstreams import UPSTREAMS_PREFIX, handle_upstreams
from spooky_trio.serving.exits import EXIT_RESTART

if TYPE_CHECKING:
    from spooky_trio.serving.reload import ConfigManager

import hmac
import json
import logging
import os
import time
import urllib.parse

import trio

from spooky_trio import __version__
from spooky_trio.config.address import is_loopback
from spooky_trio.observability.http_server import (
    HttpEndpoint,
    HttpRequest,
    HttpResponse,
)

log = logging.getLogger("spooky.observability")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ADMIN_PREFIX = "/admin/"
CONFIG_PATH = "/admin/config"
#: POST ``CONFIG_PATH/<action>`` (docs/reload.md)
CONFIG_ACTIONS = ("apply", "validate", "rollback", "promote")
_TRUE = ("1", "true", "yes")
#: a worker's metrics on its private control API (serving/workers.py scrapes it)
WORKER_METRICS_PATH = "/admin/worker/metrics"


class EndpointSetupError(Exception):
    """An endpoint's configuration cannot be served (message names the setting)."""


def metrics_endpoint(config: MetricsConfig, metrics: Metrics) -> HttpEndpoint:
    """The Prometheus endpoint of ``observability.metrics`` (``config``) over ``metrics``."""

    async def handle(request: HttpRequest) -> HttpResponse:
        if request.path != config.path:
            return HttpResponse(404, b"not found\n")
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        return HttpResponse(200, metrics.render(), content_type=PROMETHEUS_CONTENT_TYPE)

    return HttpEndpoint(
        name="metrics",
        address=config.address,
        port=config.port,
        handler=handle,
        max_connections=config.max_connections,
        connection_timeout=config.connection_timeout_ms / 1000,
    )


class ControlTarget(Protocol):
    """What the control API reads and drives of a serving process (``serving/server.py``)."""

    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def worker_index(self) -> int | None: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def activity(self) -> Activity: ...

    @property
    def reloads(self) -> ConfigManager: ...

    @property
    def generations(self) -> GenerationSet: ...

    @property
    def generation(self) -> Generation: ...

    @property
    def config(self) -> Config: ...

    @property
    def listeners(self) -> Sequence[QuicListener]: ...

    @property
    def bootstrap_listeners(self) -> Sequence[BootstrapListener]: ...

    def reload_certs(self) -> list[dict[str, object]]: ...

    def request_restart(self) -> None: ...

    async def follow_generations(self) -> None: ...


class BearerEndpoint:
    """An HTTP endpoint guarded by ``auth_token`` (a bearer token), which a non-loopback
    address requires; ``handle`` answers one request (the subclass's routes)."""

    def __init__(self, config: ControlApiConfig) -> None:
        if not config.auth_token and not is_loopback(config.address):
            raise EndpointSetupError(f"observability.control_api.auth_token is required on non-loopback address {config.address}")
        self.config = config
        self.started_monotonic = time.monotonic()
        self._token = config.auth_token.encode() if config.auth_token else None

    async def handle(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def endpoint(self, on_limit_drop: Callable[[], None] = lambda: None) -> HttpEndpoint:
        """The listening endpoint serving this API."""
        return HttpEndpoint(
            name="control API",
            address=self.config.address,
            port=self.config.port,
            handler=self.handle,
            max_connections=self.config.max_connections,
            connection_timeout=self.config.connection_timeout_ms / 1000,
            on_limit_drop=on_limit_drop,
        )

    def _auth_failure(self, request: HttpRequest) -> HttpResponse | None:
        if self._token is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return HttpResponse(401, b"unauthorized\n", headers=(("www-authenticate", 'Bearer realm="spooky"'),))
        if not hmac.compare_digest(token.strip().encode(), self._token):
            return HttpResponse(403, b"forbidden\n")
        return None


class ControlApi(BearerEndpoint):
    """Request handling of the control API for ``server`` (see the module docstring)."""

    def __init__(self, config: ControlApiConfig, server: ControlTarget) -> None:
        super().__init__(config)
        self.server = server

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Route one request (see the module docstring)."""
        cfg = self.config
        admin_paths = (cfg.runtime_path, cfg.restart_path, cfg.reload_path, cfg.reload_certs_path)
        if request.path.startswith(ADMIN_PREFIX) or request.path == ADMIN_PREFIX.rstrip("/") or request.path in admin_paths:
            denied = self._auth_failure(request)
            if denied is not None:
                return denied
        if request.path.startswith(UPSTREAMS_PREFIX):  # PUT/DELETE one backend (serving/admin_upstreams.py)
            return await handle_upstreams(self.server, request)
        posted = {cfg.reload_certs_path: self._reload_certs, cfg.restart_path: self._restart}
        if request.path in posted:
            if request.method != "POST":
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "POST"),))
            return posted[request.path]()
        if request.path == cfg.reload_path or request.path.startswith(CONFIG_PATH + "/"):
            if request.method != "POST":
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "POST"),))
            return await self._config_change(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        if request.path == cfg.health_path:
            return HttpResponse(200, b"ok\n")
        if request.path == cfg.ready_path:
            if self.server.ready:
                return HttpResponse(200, b"ready\n")
            return HttpResponse(503, b"draining\n" if self.server.draining else b"not ready\n")
        if request.path == cfg.runtime_path:
            body = json.dumps(self.snapshot(), indent=2, sort_keys=True).encode() + b"\n"
            return HttpResponse(200, body, content_type="application/json")
        if request.path == CONFIG_PATH:
            return _json(200, self.server.reloads.describe())
        if request.path == WORKER_METRICS_PATH and self.server.worker_index is not None:
            return HttpResponse(200, self.server.metrics.render(), content_type=PROMETHEUS_CONTENT_TYPE)
        return HttpResponse(404, b"not found\n")

    async def _config_change(self, request: HttpRequest) -> HttpResponse:
        reloads = self.server.reloads
        query = urllib.parse.parse_qs(request.query)
        persist = query.get("persist", ["false"])[-1].lower() in _TRUE
        action = request.path[len(CONFIG_PATH) + 1:] if request.path.startswith(CONFIG_PATH + "/") else "reload"
        if request.path == self.config.reload_path:
            outcome = await reloads.reload_file("reload_path")
        elif action == "apply":
            canary: float | None = None
            if "canary_percent" in query:
                try:
                    canary = float(query["canary_percent"][-1])
                except ValueError:
                    canary = -1.0
                if not 0 <= canary <= 100:
                    return _json(400, {"result": "invalid", "errors": [
                        {"path": "", "line": None, "column": None, "message": "canary_percent must be a number from 0 to 100"}]})
            outcome = await reloads.apply(request.body, persist=persist, canary_percent=canary)
        elif action == "validate":
            outcome = await reloads.validate(request.body)
        elif action == "rollback":
            outcome = await reloads.rollback(persist=persist)
        elif action == "promote":
            outcome = await reloads.promote(persist=persist)
        else:
            return HttpResponse(404, b"not found\n")
        # a moved control API stops on its old socket only once this answer was written
        return _json(outcome.status, outcome.body, after_send=outcome.after)

    def _reload_certs(self) -> HttpResponse:
        try:
            summary = self.server.reload_certs()
        except (IdentityError, TlsSetupError) as exc:
            log.warning("certificate reload failed, old certificates kept: %s", exc)
            return HttpResponse(422, json.dumps({"error": str(exc)}).encode() + b"\n", content_type="application/json")
        body = json.dumps({"reloaded": summary}, indent=2).encode() + b"\n"
        return HttpResponse(200, body, content_type="application/json")

    def _restart(self) -> HttpResponse:
        # the drain starts once the answer is written, so the caller always gets it
        return HttpResponse(202, f"draining; the process exits with status {EXIT_RESTART}\n".encode(),
                            after_send=self.server.request_restart)

    def snapshot(self) -> dict[str, object]:
        """The runtime JSON document."""
        server = self.server
        now = trio.current_time()
        pools: dict[str, object] = {}
        for name, pool in server.generation.pools.items():
            backends: list[dict[str, object]] = []
            for backend in pool.backends:
                state = backend.state
                backends.append({
                    "id": backend.id,
                    "address": f"{backend.target.scheme}://{backend.target.host}:{backend.target.port}",
                    "connect_address": state.connect_address,
                    "healthy": state.healthy,
                    "available": state.available(now),
                    "ejected": state.passive.ejected(now),
                    "ejections": state.passive.ejections,
                    "in_flight": state.in_flight,
                    "latency_ewma_ms": None if state.latency is None else round(state.latency * 1000, 3),
                    "failures": dict(state.failures),
                    "circuit_breaker": state.breaker.snapshot(now, server.config.resilience.circuit_breaker),
                    "origin": backend.origin,
                })
            entry: dict[str, object] = {"backends": backends}
            discovery = server.state.discovery.describe(name, pool.config)
            if discovery is not None:  # the source's last good set and health, the admin API's backends
                entry["discovery"] = discovery
            pools[name] = entry
        quic_conns = sum(len(q.connections) for q in server.listeners)
        tcp_conns = sum(t.open_connections for t in server.bootstrap_listeners)
        snapshot: dict[str, object] = {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "config_generation": server.generation.number,
            "config_canary_generation": None if server.generations.canary is None else server.generations.canary.number,
            "ready": server.ready,
            "draining": server.draining,
            "listeners": [
                {"address": q.address, "port": q.port, "protocols": ["h3", "h2", "http/1.1"], "draining": q.draining,
                 "quic_steering": q.steering_describe()}
                for q in server.listeners
            ],
            "pools": pools,
            "connections": {"quic": quic_conns, "tcp": tcp_conns, "total": quic_conns + tcp_conns},
            "in_flight_requests": server.activity.count,
            "overload": _overload_snapshot(server),
            "rate_limits": server.state.rate_limits.snapshot(server.config.resilience),
            "auth": {"pools": describe_auth(server.config), **server.state.auth.snapshot()},
            "traffic_policy": describe_traffic(server.config),
            "canary_traffic_policy": None if server.generations.canary is None else describe_traffic(server.generations.canary.config),
            "mirror_copies_in_flight": dict(server.state.shadows.running),
        }
        if server.worker_index is not None:
            requests = server.metrics.registry.get_sample_value("spooky_requests_total") or 0
            snapshot["worker"] = {"index": server.worker_index, "pid": os.getpid(), "requests": int(requests)}
        return snapshot


def _overload_snapshot(server: ControlTarget) -> dict[str, object]:
    """Admission, brownout, inflight slots, route queues and retry budgets (resilience/)."""
    state = server.state.resilience
    config = server.config
    admission = config.resilience.adaptive_admission
    budgets = state.budgets
    return {
        "global_inflight": state.global_slots.held,
        "global_inflight_limit": config.performance.global_inflight_limit,
        "pool_inflight": {name: slots.held for name, slots in state.pool_slots.items() if slots.held},
        "adaptive_admission": {"enabled": admission.enabled, "limit": state.admission.limit(admission) if admission.enabled else None},
        "brownout": {"enabled": config.resilience.brownout.enabled, "active": state.brownout.active,
                     "activations": state.brownout.activations},
        "route_queues": {"waiting": state.queues.total, "by_route": dict(state.queues.waiting)},
        "retry_budget": {
            "global_credit": None if budgets.global_budget is None else budgets.global_budget.credit / 100,
            "routes": {pool: budget.credit / 100 for pool, budget in budgets.routes.items()},
        },
    }


def _json(status: int, body: object, after_send: Callable[[], None] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, indent=2).encode() + b"\n", content_type="application/json", after_send=after_send)
