"""Cross-field rules of ``upstream.<pool>.auth`` (spooky-head.md section 1, extensions.md
sections 4 and 7): every error Spooky reports, plus ours for the extension keys.

Messages never echo a secret or a key: a duplicate API key is reported by its index.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from spooky_trio.config.address import is_loopback, is_token
from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import KeyPath
from spooky_trio.config.schema_auth import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    NEVER_INJECTED,
    ApiKeyAuthConfig,
    AuthConfig,
    ExternalAuthConfig,
    HeaderValueConfig,
    JwtAuthConfig,
)

#: external_auth keys that only kind oidc takes (kind http must leave them out)
_OIDC_ONLY = ("discovery_url", "issuer_url", "client_id", "client_secret", "client_secret_file", "audience", "scopes",
              "discovery_cache_secs", "introspection_cache_secs")


def validate_auth(out: Problems, path: KeyPath, auth: AuthConfig) -> None:
    """Add every violation in the ``auth`` block at ``path`` to ``out``."""
    if auth.api_key is not None:
        _api_key(out, path + ("api_key",), auth.api_key)
    if auth.jwt is not None:
        _jwt(out, path + ("jwt",), auth.jwt)
    for key in ("required_scopes", "required_roles"):
        values: list[str] = getattr(auth, key)
        _no_blank_entries(out, path + (key,), values)
        if values and auth.jwt is None:
            out.add(path + (key,), f"{key} needs auth.jwt (scopes and roles are claims of the token)")
    if auth.external_auth is not None:
        ext_path = path + ("external_auth",)
        if auth.api_key is not None or auth.jwt is not None or auth.required_scopes or auth.required_roles:
            out.add(ext_path, "external_auth cannot be combined with api_key, jwt, required_scopes or required_roles")
        _external(out, ext_path, auth.external_auth)
    _forward_claims(out, path, auth)
    if auth.insufficient_scope_status not in (401, 403):
        out.add(path + ("insufficient_scope_status",), f"must be 401 or 403 (got {auth.insufficient_scope_status})")


def _api_key(out: Problems, path: KeyPath, api_key: ApiKeyAuthConfig) -> None:
    name = api_key.header_name.strip()
    if not name or not is_token(name):
        out.add(path + ("header_name",), f"must be an HTTP header name (got {api_key.header_name!r})")
    if not api_key.keys:
        out.add(path + ("keys",), "must list at least one key")
    seen: dict[str, int] = {}
    for index, key in enumerate(api_key.keys):
        trimmed = key.strip()
        if not trimmed:
            out.add(path + ("keys", index), "must not be blank")
        elif trimmed in seen:
            out.add(path + ("keys", index), f"duplicates keys[{seen[trimmed]}]")
        else:
            seen[trimmed] = index


def _jwt(out: Problems, path: KeyPath, jwt: JwtAuthConfig) -> None:
    if jwt.secret is None and jwt.jwks_uri is None:
        out.add(path + ("secret",), "required (or jwks_uri, to verify tokens with the keys of a JWK Set)")
    elif jwt.secret is not None and not jwt.secret.strip():
        out.add(path + ("secret",), "must not be blank")
    elif jwt.secret is not None and _looks_like_a_public_key(jwt.secret.strip().encode()):
        out.add(path + ("secret",), "is a public key: an HMAC secret must never be one (use jwks_uri for asymmetric tokens)")
    for key in ("issuer", "audience"):
        value: str | None = getattr(jwt, key)
        if value is not None and not value.strip():
            out.add(path + (key,), "must not be blank when given")
    out.at_least(path + ("clock_skew_secs",), jwt.clock_skew_secs, 0)
    if jwt.jwks_uri is not None:
        error = url_error(jwt.jwks_uri, https_only=False, loopback_http=True)
        if error:
            out.add(path + ("jwks_uri",), error)
    elif jwt.ca_file is not None:
        out.add(path + ("ca_file",), "only used with jwks_uri")
    out.at_least(path + ("jwks_cache_secs",), jwt.jwks_cache_secs, 1)
    out.at_least(path + ("jwks_min_refresh_secs",), jwt.jwks_min_refresh_secs, 1)
    out.positive(path + ("jwks_timeout_ms",), jwt.jwks_timeout_ms)
    if jwt.algorithms is not None:
        _algorithms(out, path + ("algorithms",), jwt)


def _looks_like_a_public_key(secret: bytes) -> bool:
    # PyJWT's own test (its HMAC refuses such a key); imported here: only configs with a
    # jwt secret load PyJWT
    from jwt.utils import is_pem_format, is_ssh_key

    return is_pem_format(secret) or is_ssh_key(secret)


def _algorithms(out: Problems, path: KeyPath, jwt: JwtAuthConfig) -> None:
    algorithms = jwt.algorithms or []
    if not algorithms:
        out.add(path, "must list at least one algorithm when given")
    seen: set[str] = set()
    for index, alg in enumerate(algorithms):
        where = path + (index,)
        if alg in seen:
            out.add(where, f"duplicate algorithm {alg!r}")
        seen.add(alg)
        if alg.lower() == "none":
            out.add(where, "unsigned tokens (alg none) are never accepted")
        elif alg in HMAC_ALGORITHMS:
            if jwt.secret is None:
                out.add(where, f"{alg} needs jwt.secret (HMAC is never used with a JWKS key)")
        elif alg in ASYMMETRIC_ALGORITHMS:
            if jwt.jwks_uri is None:
                out.add(where, f"{alg} needs jwt.jwks_uri")
        else:
            out.add(where, f"unsupported algorithm {alg!r}: use one of {', '.join(HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS)}")


def _external(out: Problems, path: KeyPath, ext: ExternalAuthConfig) -> None:
    out.positive(path + ("timeout_ms",), ext.timeout_ms)
    _request_headers(out, path + ("request_headers",), ext.request_headers)
    if ext.kind == "http":
        _external_http(out, path, ext)
    else:
        _external_oidc(out, path, ext)


def _external_http(out: Problems, path: KeyPath, ext: ExternalAuthConfig) -> None:
    for key in _OIDC_ONLY:
        if getattr(ext, key) is not None:
            out.add(path + (key,), "only allowed with kind: oidc")
    if ext.endpoint is None:
        out.add(path + ("endpoint",), "required when kind is http", path + ("kind",))
    else:
        error = url_error(ext.endpoint, https_only=False, loopback_http=False)
        if error:
            out.add(path + ("endpoint",), error)
    seen: dict[str, int] = {}
    for index, name in enumerate(ext.response_header_allowlist):
        lowered = name.strip().lower()
        if not lowered or not is_token(lowered):
            out.add(path + ("response_header_allowlist", index), f"must be an HTTP header name (got {name!r})")
        elif lowered in seen:
            out.add(path + ("response_header_allowlist", index), f"duplicates response_header_allowlist[{seen[lowered]}]")
        else:
            seen[lowered] = index


def _external_oidc(out: Problems, path: KeyPath, ext: ExternalAuthConfig) -> None:
    if ext.endpoint is not None:
        out.add(path + ("endpoint",), "only allowed with kind: http")
    urls = [(key, getattr(ext, key)) for key in ("discovery_url", "issuer_url")]
    given = [(key, value) for key, value in urls if value is not None and value.strip()]
    if not given:
        out.add(path + ("issuer_url",), "kind oidc needs discovery_url or issuer_url", path + ("kind",))
    for key, value in given:
        error = url_error(value, https_only=True, loopback_http=False)
        if error:
            out.add(path + (key,), error)
    if ext.client_id is None:
        out.add(path + ("client_id",), "required when kind is oidc", path + ("kind",))
    elif not ext.client_id.strip():
        out.add(path + ("client_id",), "must not be blank")
    for key in ("client_secret", "audience"):
        text: str | None = getattr(ext, key)
        if text is not None and not text.strip():
            out.add(path + (key,), "must not be blank when given")
    if ext.client_secret is not None and ext.client_secret_file is not None:
        out.add(path + ("client_secret_file",), "give client_secret or client_secret_file, not both", path + ("client_secret",))
    _no_blank_entries(out, path + ("scopes",), ext.scopes or [])
    if ext.response_header_allowlist:
        out.add(path + ("response_header_allowlist",), "must be empty for kind oidc (an introspection adds no headers)")
    for key in ("discovery_cache_secs", "introspection_cache_secs"):
        seconds: int | None = getattr(ext, key)
        if seconds is not None:
            out.at_least(path + (key,), seconds, 0)


def _request_headers(out: Problems, path: KeyPath, headers: list[HeaderValueConfig]) -> None:
    seen: dict[str, int] = {}
    for index, header in enumerate(headers):
        lowered = header.name.strip().lower()
        if not lowered or not is_token(lowered):
            out.add(path + (index, "name"), f"must be an HTTP header name (got {header.name!r})")
        elif lowered in seen:
            out.add(path + (index, "name"), f"duplicates request_headers[{seen[lowered]}]")
        else:
            seen[lowered] = index
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in header.value):
            out.add(path + (index, "value"), "must not contain control characters (tab excepted)")


def _forward_claims(out: Problems, path: KeyPath, auth: AuthConfig) -> None:
    claims_path = path + ("forward_claims",)
    if auth.forward_claims and auth.jwt is None:
        out.add(claims_path, "forward_claims needs auth.jwt (the claims come from the token)")
    seen: dict[str, str] = {}
    for claim, header in auth.forward_claims.items():
        where = claims_path + (claim,)
        if not claim.strip():
            out.add(where, "claim names must not be blank")
        lowered = header.strip().lower()
        if not lowered or not is_token(lowered):
            out.add(where, f"must be an HTTP header name (got {header!r})")
        elif lowered in NEVER_INJECTED:
            out.add(where, f"{lowered} is set by the proxy or the client's transport, never from a claim")
        elif lowered in seen:
            out.add(where, f"header {lowered!r} is already used for claim {seen[lowered]!r}")
        else:
            seen[lowered] = claim


def _no_blank_entries(out: Problems, path: KeyPath, values: list[str]) -> None:
    for index, value in enumerate(values):
        if not value.strip():
            out.add(path + (index,), "must not be blank")


def url_error(url: str, *, https_only: bool, loopback_http: bool) -> str | None:
    """Why ``url`` is not an absolute URL the auth layer may call, or None.

    ``https_only``: only ``https://``; else ``http://`` too, restricted to a loopback host
    when ``loopback_http`` (a JWKS must not travel in clear text beyond the host).
    """
    if any(ch.isspace() for ch in url) or not url.isascii():
        return f"invalid URL {url!r}: must be ASCII without whitespace"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    scheme = parts.scheme.lower()
    allowed = ("https",) if https_only else ("http", "https")
    if scheme not in allowed:
        return f"invalid URL {url!r}: must be an absolute {' or '.join(s + '://' for s in allowed)} URL"
    if not host:
        return f"invalid URL {url!r}: no host"
    if scheme == "http" and loopback_http and not is_loopback(host):
        return f"invalid URL {url!r}: http:// only to a loopback host (use https://)"
    if parts.fragment:
        return f"invalid URL {url!r}: must not have a fragment"
    return None
