"""``tenant-header``: a header-based tenant router.

Reads the tenant from a request header (``header``, default ``x-tenant``), checks it against
an allowlist (``tenants``, and/or ``tenants_file``: one per line, re-read in the background
every ``refresh_secs``, the last good list kept when a read fails), sends it to the backend
as ``upstream_header`` (default ``x-tenant-id``; a client's own copy is always removed) and,
with ``path_prefix`` (e.g. ``/tenants/{tenant}``), routes the request under the tenant's
path on the backend. The answer carries ``upstream_header`` back.

    plugins:
      - name: tenant
        entry_point: tenant-header
        config: {header: x-tenant, required: true, tenants: [acme, globex], path_prefix: "/t/{tenant}"}

No tenant: 400 (``required: true``), else the request goes on untouched. An unknown or
malformed tenant: 403 / 400.
"""

from __future__ import annotations

import logging
import re

import trio

from spooky_trio.plugin import PluginConfigError, Request, Response, ResponseHead
from spooky_example_filters import _settings

log = logging.getLogger("spooky_example_filters.tenant")

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_KNOWN = {"header", "required", "tenants", "tenants_file", "refresh_secs", "upstream_header", "path_prefix"}


class TenantFilter:
    """The filter; the class is its own factory (``TenantFilter(config)``)."""

    def __init__(self, config: dict[str, object]) -> None:
        _settings.only(config, _KNOWN)
        self.header = _settings.text(config, "header", "x-tenant")
        self.upstream_header = _settings.text(config, "upstream_header", "x-tenant-id")
        self.required = _settings.flag(config, "required", False)
        self.refresh = _settings.number(config, "refresh_secs", 30, 1, 86400)
        self.file = _settings.text(config, "tenants_file")
        listed = config.get("tenants", [])
        if not isinstance(listed, list) or not all(isinstance(t, str) and _TENANT.fullmatch(t) for t in listed):
            raise PluginConfigError("must be a list of tenant ids (lowercase letters, digits, '_', '-')", "tenants")
        self.listed = frozenset(listed)
        #: the allowlist in force (None: every well-formed tenant); the file's part is
        #: replaced by the background task, whole, only after a good read
        self.allowed: frozenset[str] | None = self.listed if listed or self.file else None
        if self.file is not None:
            try:
                self.allowed = self.listed | _read(self.file)
            except OSError as exc:
                raise PluginConfigError(f"cannot read it: {exc.strerror or exc}", "tenants_file") from None
        prefix = _settings.text(config, "path_prefix")
        if prefix is not None and (not prefix.startswith("/") or prefix.count("{tenant}") != 1):
            raise PluginConfigError("must start with '/' and hold {tenant} once", "path_prefix")
        self.prefix = prefix

    async def on_request(self, request: Request) -> Response | None:
        assert self.header is not None and self.upstream_header is not None
        raw = request.headers.get(self.header)
        request.headers.remove(self.upstream_header)  # only the proxy says who the tenant is
        if raw is None:
            if self.required:
                return Response.text(400, f"missing {self.header} header", reason="missing_tenant")
            return None
        tenant = raw.strip().lower()
        if not _TENANT.fullmatch(tenant):
            return Response.text(400, f"malformed {self.header} header", reason="invalid_tenant")
        if self.allowed is not None and tenant not in self.allowed:
            return Response.text(403, "unknown tenant", reason="unknown_tenant")
        request.headers.set(self.upstream_header, tenant)
        if self.prefix is not None:
            request.path = self.prefix.replace("{tenant}", tenant).rstrip("/") + request.path
        request.state["tenant"] = tenant
        return None

    async def on_response(self, request: Request, response: ResponseHead) -> None:
        tenant = request.state.get("tenant")
        if isinstance(tenant, str) and self.upstream_header is not None:
            response.headers.set(self.upstream_header, tenant)

    async def background(self) -> None:
        """Re-read ``tenants_file`` every ``refresh_secs`` (without a file: nothing to do)."""
        if self.file is None:
            return
        while True:
            await trio.sleep(self.refresh)
            try:
                # the read runs in a worker thread: a slow disk never stalls the proxy
                fresh = await trio.to_thread.run_sync(_read, self.file)
            except OSError as exc:
                log.warning("tenants_file %s: %s; keeping the last list", self.file, exc.strerror or exc)
                continue
            self.allowed = self.listed | fresh


def _read(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as handle:
        return frozenset(line.strip().lower() for line in handle if _TENANT.fullmatch(line.strip().lower()))
