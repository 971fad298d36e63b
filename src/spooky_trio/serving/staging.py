"""Staging a reload beside the running server: what :meth:`Server.stage` prepares (bound,
opened, built) before the commit, and how it is undone when the transaction fails."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from spooky_trio.config import Config, ControlApiConfig, ListenerConfig
from spooky_trio.config.issues import ConfigIssue, PositionMap
from spooky_trio.core.generation import Generation
from spooky_trio.observability.http_server import HttpEndpoint
from spooky_trio.observability.metrics import Metrics
from spooky_trio.serving.control import ControlApi, EndpointSetupError, metrics_endpoint
from spooky_trio.serving.listeners import (
    BindError,
    EndpointConfig,
    ListenerPair,
    Service,
)

log = logging.getLogger("spooky.server")


@attrs.define(eq=False)
class Staged:
    """What ``Server.stage`` prepared; nothing running has changed yet."""

    generation: Generation
    config: Config
    #: the listener pairs in config order once committed (kept and added)
    pairs: list[ListenerPair] = attrs.Factory(list)
    #: added pairs: bound, not serving
    added: list[ListenerPair] = attrs.Factory(list)
    #: kept pairs with the fresh (unbound) pair whose settings they adopt
    kept: list[tuple[ListenerPair, ListenerPair]] = attrs.Factory(list)
    removed: list[ListenerPair] = attrs.Factory(list)
    #: service name -> new Service (bound) or None (disabled)
    services: dict[str, Service | None] = attrs.Factory(dict)
    #: services kept on their socket with a new handler: (service, config, handler)
    retuned: list[tuple[Service, EndpointConfig, HttpEndpoint]] = attrs.Factory(list)
    control_api: ControlApi | None = None
    log_handler: logging.Handler | None = None

    def abort(self) -> None:
        """Undo the staging: close what it bound or opened."""
        for pair in self.added:
            pair.unbind()
        for service in self.services.values():
            if service is not None:
                service.endpoint.unbind()
        if self.log_handler is not None:
            self.log_handler.close()


def stage_listeners(
    config: Config, staged: Staged, current: list[ListenerPair], make_pair: Callable[[ListenerConfig, Config], ListenerPair],
    positions: PositionMap, issues: list[ConfigIssue],
) -> None:
    """A fresh pair per listener block of ``config``: a block whose (address, port) serves
    now is kept (it adopts the fresh pair's settings at the commit), a new one is bound now
    (a bind failure is an issue at its ``port`` key), the others are to be removed."""
    existing = {pair.key: pair for pair in current}
    base: tuple[str, ...] = ("listeners",) if config.listeners else ("listen",)
    for index, listener in enumerate(config.effective_listeners()):
        path: tuple[str | int, ...] = base + (index,) if config.listeners else base
        try:
            fresh = make_pair(listener, config)
        except Exception as exc:  # unreadable certificate, bad TLS material
            issues.append(positions.issue(path + ("tls",), f"listener {listener.address}:{listener.port}: {exc}"))
            continue
        kept = existing.pop(fresh.key, None)
        if kept is not None:
            staged.kept.append((kept, fresh))
            staged.pairs.append(kept)
            continue
        try:
            fresh.bind()
        except BindError as exc:
            issues.append(positions.issue(path + ("port",), str(exc), related=[path]))
            continue
        staged.added.append(fresh)
        staged.pairs.append(fresh)
    staged.removed = list(existing.values())


def stage_services(
    config: Config, staged: Staged, current_services: dict[str, Service], current_api: ControlApi | None,
    make_control_api: Callable[[ControlApiConfig], ControlApi], metrics: Metrics, positions: PositionMap, issues: list[ConfigIssue],
) -> None:
    """The metrics endpoint and control API of ``config``: unchanged ones stay, a changed
    one on the same socket is retuned at the commit, a moved one is bound now (a bind
    failure of a ``required`` endpoint is an issue), a disabled one is to be stopped."""
    obs = config.observability
    blocks: tuple[tuple[str, str, EndpointConfig], ...] = (("metrics", "metrics", obs.metrics), ("control", "control_api", obs.control_api))
    for name, section, cfg in blocks:
        current = current_services.get(name)
        if current is not None and current.config == cfg:
            continue
        if not cfg.enabled:
            if current is not None:
                staged.services[name] = None
            continue
        if isinstance(cfg, ControlApiConfig):
            try:
                api = make_control_api(cfg)
            except EndpointSetupError as exc:
                issues.append(positions.issue(("observability", section, "auth_token"), str(exc)))
                continue
            if current_api is not None:
                api.started_monotonic = current_api.started_monotonic
            staged.control_api = api
            endpoint = api.endpoint(metrics.control_api_drops.inc)
        else:
            endpoint = metrics_endpoint(cfg, metrics)
        if (
            current is not None
            and current.endpoint.bound
            and (current.config.address, current.config.port) == (cfg.address, cfg.port)
        ):
            staged.retuned.append((current, cfg, endpoint))  # same socket, new handler and limits
            continue
        try:
            endpoint.bind()
        except OSError as exc:
            message = f"cannot bind the {endpoint.name} on tcp {cfg.address}:{cfg.port}: {exc.strerror or exc}"
            if cfg.required:
                issues.append(positions.issue(("observability", section, "port"), message, related=[("observability", section)]))
                continue
            log.error("%s; serving without it", message)
        staged.services[name] = Service(endpoint, cfg)
