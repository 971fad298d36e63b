"""The supervisor's control API (``performance.worker_threads > 1``): its own health and
readiness, the workers' runtime documents, and the reloads, certificate reloads,
``/admin/config/*`` and ``/admin/upstreams/*`` requests forwarded to every worker
(``serving/workers.py``; the backend admin's changes are replayed to a restarted worker)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING

from spooky_trio import __version__
from spooky_trio.config import ControlApiConfig
from spooky_trio.observability.http_server import HttpRequest, HttpResponse
from spooky_trio.serving.admin_upstreams import UPSTREAMS_PREFIX
from spooky_trio.serving.control import CONFIG_PATH, BearerEndpoint
from spooky_trio.serving.worker import INTERNAL

if TYPE_CHECKING:
    from spooky_trio.serving.workers import Supervisor

log = logging.getLogger("spooky.workers")


class SupervisorControlApi(BearerEndpoint):
    """The configured control API, served by the supervisor (see docs/performance.md)."""

    def __init__(self, config: ControlApiConfig, supervisor: Supervisor) -> None:
        super().__init__(config)
        self.supervisor = supervisor

    async def handle(self, request: HttpRequest) -> HttpResponse:
        cfg, sup = self.config, self.supervisor
        admin_paths = (cfg.runtime_path, cfg.restart_path, cfg.reload_path, cfg.reload_certs_path)
        if request.path.startswith("/admin") or request.path in admin_paths:
            denied = self._auth_failure(request)
            if denied is not None:
                return denied
        if request.path.startswith(UPSTREAMS_PREFIX):  # the backend admin: every worker, remembered for restarts
            if request.method not in ("PUT", "DELETE"):
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "PUT, DELETE"),))
            answer = await self._forward(request.method, request.path, request)
            if answer.status == 200:
                sup.remember_backend_change(request.method, request.path, request.body)
            return answer
        forwarded = {cfg.reload_path: INTERNAL.reload_path, cfg.reload_certs_path: INTERNAL.reload_certs_path}
        if request.path == cfg.restart_path:
            if request.method != "POST":
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "POST"),))
            return HttpResponse(202, b"draining every worker; the supervisor exits with status 75\n", after_send=sup.request_restart)
        if request.path in forwarded or request.path.startswith(CONFIG_PATH + "/"):
            if request.method != "POST":
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "POST"),))
            target = forwarded.get(request.path, request.path)
            return await self._forward("POST", target, request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        if request.path == cfg.health_path:
            return HttpResponse(200, b"ok\n")
        if request.path == cfg.ready_path:
            return await self._ready()
        if request.path == cfg.runtime_path:
            return _json(200, await self.supervisor_snapshot())
        if request.path == CONFIG_PATH:
            return await self._forward("GET", CONFIG_PATH, request)
        return HttpResponse(404, b"not found\n")

    async def _ready(self) -> HttpResponse:
        sup = self.supervisor
        if sup.draining:
            return HttpResponse(503, b"draining\n")
        answers = await sup.each_worker("GET", INTERNAL.ready_path, timeout=2.0)
        if all(entry.status == 200 for entry in answers):
            return HttpResponse(200, b"ready\n")
        return HttpResponse(503, b"not ready\n")

    async def _forward(self, method: str, target: str, request: HttpRequest) -> HttpResponse:
        """Send the request to every worker; answer with the first worker's document plus
        ``workers`` (each one's status and generation). When the workers disagree (status,
        or the sha256 of the config they serve) or one cannot be reached: 502,
        ``result: inconsistent`` and each worker's full answer."""
        full = target + ("?" + request.query if request.query else "")
        entries = await self.supervisor.each_worker(method, full, request.body, timeout=30.0)
        summary: list[dict[str, object]] = []
        documents = [entry.document() for entry in entries]
        for entry, doc in zip(entries, documents):
            item: dict[str, object] = {"worker": entry.worker, "pid": entry.pid, "status": entry.status}
            if entry.error is not None:
                item["error"] = entry.error
            if isinstance(doc, dict):
                for key in ("result", "generation", "sha256"):
                    if key in doc:
                        item[key] = doc[key]
            summary.append(item)
        statuses = {entry.status for entry in entries}
        hashes = {item.get("sha256") for item in summary}
        first = documents[0]
        if len(statuses) == 1 and entries[0].status is not None and len(hashes) == 1 and isinstance(first, dict):
            return _json(entries[0].status, {**first, "workers": summary})
        failed = [entry.worker for entry in entries if entry.status != entries[0].status or entry.error is not None]
        log.error("workers disagree on %s %s: %s", method, target, summary)
        return _json(502, {"result": "inconsistent", "failed_workers": failed, "workers": summary,
                           "answers": documents})

    async def supervisor_snapshot(self) -> dict[str, object]:
        sup = self.supervisor
        answers = await sup.each_worker("GET", INTERNAL.runtime_path)
        workers = []
        for slot, entry in zip(sup.slots, answers):
            item = slot.describe()
            doc = entry.document()
            if entry.status == 200 and isinstance(doc, dict):
                item["runtime"] = doc
            elif entry.status == 200:
                item["runtime_error"] = "unreadable runtime document"
            else:
                item["runtime_error"] = entry.error or f"status {entry.status}"
            workers.append(item)
        return {
            "version": __version__,
            "supervisor": {"pid": os.getpid(), "worker_threads": sup.count,
                           "pin_workers": sup.config.performance.pin_workers,
                           "restarts": sum(slot.restarts for slot in sup.slots)},
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "ready": sup.ready,
            "draining": sup.draining,
            "workers": workers,
        }


def _json(status: int, body: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, indent=2).encode() + b"\n", content_type="application/json")
