"""``upstream.<pool>.auth``: Spooky's authentication block (spooky-head.md section 1) plus
our extensions (extensions.md sections 4 and 7), as frozen attrs classes.

Field names are the YAML keys; defaults are Spooky's. Keys marked *ext* are ours (a config
that uses none of them runs on Spooky too). The cross-field rules (which combinations are
allowed, URL schemes, header names, blank values) are in
:mod:`spooky_trio.config.validate_auth`.

Secrets (``jwt.secret``, ``api_key.keys``, ``external_auth.client_secret``) are plain strings
here because the proxy needs them, but their ``repr`` is ``'***'`` so that a config object
printed by accident (a log line, a traceback, a test failure) never shows them.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spooky_trio.config.markers import EXT
from spooky_trio.config.normalize import empty_to_none

#: what a secret's repr shows
REDACTED = "***"


def _redacted(_: object) -> str:
    return repr(REDACTED)


class Secret(str):
    """A string that is a secret: the loader's type errors for it never quote the value
    (``config/convert.py``), and it is shown as ``***`` wherever the proxy describes itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


#: asymmetric algorithms accepted with ``jwt.jwks_uri`` when ``algorithms`` is not set
#: (extensions.md section 4 and 7: narrowed by a key's own ``alg`` when the JWK states one)
DEFAULT_JWKS_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
#: every algorithm ``jwt.algorithms`` may name (HMAC ones need ``secret``, the others ``jwks_uri``)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@attrs.frozen(kw_only=True)
class ApiKeyAuthConfig:
    """``auth.api_key``: the first ``header_name`` header (trimmed) must equal a trimmed key."""

    header_name: str = "x-api-key"
    keys: list[Secret] = attrs.field(factory=list, repr=_redacted)


@attrs.frozen(kw_only=True)
class JwtAuthConfig:
    """``auth.jwt``: a bearer JWT, HS256 with ``secret`` (Spooky) and/or verified with the
    keys of ``jwks_uri`` (ext). ``None`` means the key was not given."""

    secret: Secret | None = attrs.field(default=None, repr=_redacted)
    issuer: str | None = None
    audience: str | None = None
    clock_skew_secs: int = 30
    #: ext: HTTPS (or loopback HTTP) URL of a JWK Set; makes ``secret`` optional
    jwks_uri: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    #: ext: accepted ``alg`` values; default ``[HS256]`` with ``secret`` plus
    #: :data:`DEFAULT_JWKS_ALGORITHMS` with ``jwks_uri``
    algorithms: list[str] | None = attrs.field(default=None, metadata=EXT)
    #: ext: how long fetched keys are used before a background refresh
    jwks_cache_secs: int = attrs.field(default=300, metadata=EXT)
    #: ext: an unknown ``kid`` triggers a refetch at most this often
    jwks_min_refresh_secs: int = attrs.field(default=30, metadata=EXT)
    #: ext: deadline of one JWKS fetch (also the longest a request waits for a refetch)
    jwks_timeout_ms: int = attrs.field(default=1000, metadata=EXT)
    #: ext: extra CA bundle trusted (beside the system roots) for ``jwks_uri``
    ca_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)

    def effective_algorithms(self) -> tuple[str, ...]:
        """The ``alg`` values a token may use (see :attr:`algorithms`)."""
        if self.algorithms is not None:
            return tuple(self.algorithms)
        default: tuple[str, ...] = ("HS256",) if self.secret is not None else ()
        return default + (DEFAULT_JWKS_ALGORITHMS if self.jwks_uri is not None else ())


#: ``external_auth.kind`` and ``failure_mode``: exact spellings, no aliases (spooky-head.md
#: section 3; read by the loader like every enum, :mod:`spooky_trio.config.spellings`)
ExternalAuthKind = Literal["http", "oidc"]
FailureMode = Literal["fail_closed", "fail_open"]


@attrs.frozen(kw_only=True)
class HeaderValueConfig:
    """One ``{name, value}`` of ``external_auth.request_headers``."""

    name: str
    value: str


@attrs.frozen(kw_only=True)
class ExternalAuthConfig:
    """``auth.external_auth``, tagged by ``kind`` (``http`` or ``oidc``; exact spelling).

    One class holds both kinds' keys; the validator rejects a key of the other kind (the
    oidc keys default to None so that "given" can be told from "omitted").
    """

    kind: ExternalAuthKind
    # kind http
    endpoint: str | None = None
    response_header_allowlist: list[str] = attrs.field(factory=list)
    # both kinds
    request_headers: list[HeaderValueConfig] = attrs.field(factory=list)
    timeout_ms: int = 1000
    #: ``fail_closed`` or ``fail_open`` (exact spelling, as Spooky)
    failure_mode: FailureMode = "fail_closed"
    #: ext: extra CA bundle trusted (beside the system roots) for every call of this block
    ca_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    # kind oidc
    discovery_url: str | None = None
    issuer_url: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = attrs.field(default=None, repr=_redacted)
    #: ext: a file holding the client secret (trimmed), read at load and at every reload
    client_secret_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    audience: str | None = None
    scopes: list[str] | None = None
    #: ext: how long a discovery document is used
    discovery_cache_secs: int | None = attrs.field(default=None, metadata=EXT)
    #: ext: how long an active introspection answer is reused (0: never, Spooky's behaviour)
    introspection_cache_secs: int | None = attrs.field(default=None, metadata=EXT)

    @property
    def fail_open(self) -> bool:
        return self.failure_mode == "fail_open"


@attrs.frozen(kw_only=True)
class AuthConfig:
    """``upstream.<pool>.auth`` (spooky-head.md section 1; extensions.md section 4)."""

    api_key: ApiKeyAuthConfig | None = None
    jwt: JwtAuthConfig | None = None
    required_scopes: list[str] = attrs.field(factory=list)
    required_roles: list[str] = attrs.field(factory=list)
    external_auth: ExternalAuthConfig | None = None
    #: ext: claim name -> upstream header name (client copies always removed first)
    forward_claims: dict[str, str] = attrs.field(factory=dict, metadata=EXT)
    #: ext: status of a token that lacks a required scope or role (Spooky: 401)
    insufficient_scope_status: int = attrs.field(default=401, metadata=EXT)


#: ``discovery_cache_secs`` when not given
DEFAULT_DISCOVERY_CACHE_SECS = 3600

#: client headers never sent on the external auth subrequest (spooky-head.md section 1)
SUBREQUEST_EXCLUDED = frozenset({
    "host", "connection", "content-length", "transfer-encoding", "upgrade", "te", "trailer", "expect", "keep-alive",
    "proxy-connection",
})
#: headers an auth answer never injects into the upstream request (nor ``forward_claims``)
NEVER_INJECTED = SUBREQUEST_EXCLUDED | frozenset({
    "authorization", "location", "www-authenticate", "forwarded", "x-forwarded-for", "x-forwarded-host",
    "x-forwarded-port", "x-forwarded-proto",
})
