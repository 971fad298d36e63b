"""The auth settings of a config as ``/admin/runtime`` shows them: every secret as ``***``
(extensions.md section 4), URLs without credentials or query."""

from __future__ import annotations

from spooky_trio.auth.urls import redact_url
from spooky_trio.config import Config
from spooky_trio.config.schema_auth import REDACTED, AuthConfig


def describe_auth(config: Config) -> dict[str, object]:
    """Pool name -> its ``auth`` block, redacted; pools without one are left out."""
    return {name: _pool(pool.auth) for name, pool in config.upstream.items() if pool.auth is not None}


def _pool(auth: AuthConfig) -> dict[str, object]:
    out: dict[str, object] = {}
    if auth.api_key is not None:
        out["api_key"] = {"header_name": auth.api_key.header_name, "keys": REDACTED, "key_count": len(auth.api_key.keys)}
    jwt = auth.jwt
    if jwt is not None:
        out["jwt"] = {
            "secret": None if jwt.secret is None else REDACTED,
            "jwks_uri": None if jwt.jwks_uri is None else redact_url(jwt.jwks_uri),
            "algorithms": list(jwt.effective_algorithms()),
            "issuer": jwt.issuer,
            "audience": jwt.audience,
            "clock_skew_secs": jwt.clock_skew_secs,
        }
        out["required_scopes"] = list(auth.required_scopes)
        out["required_roles"] = list(auth.required_roles)
        out["insufficient_scope_status"] = auth.insufficient_scope_status
        out["forward_claims"] = dict(auth.forward_claims)
    ext = auth.external_auth
    if ext is not None:
        external: dict[str, object] = {"kind": ext.kind, "failure_mode": ext.failure_mode, "timeout_ms": ext.timeout_ms,
                                       "request_headers": [h.name for h in ext.request_headers]}
        if ext.kind == "http":
            external["endpoint"] = redact_url(ext.endpoint or "")
            external["response_header_allowlist"] = list(ext.response_header_allowlist)
        else:
            for key in ("discovery_url", "issuer_url"):
                value = getattr(ext, key)
                external[key] = None if value is None else redact_url(value)
            external["client_id"] = ext.client_id
            external["client_secret"] = REDACTED if ext.client_secret is not None or ext.client_secret_file is not None else None
            external["audience"] = ext.audience
            external["scopes"] = list(ext.scopes or ())
            external["introspection_cache_secs"] = ext.introspection_cache_secs or 0
        out["external_auth"] = external
    return out
