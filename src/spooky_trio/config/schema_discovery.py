"""``upstream.<pool>.discovery`` (ext, extensions.md section 6): where a pool's backends come
from when they are not (only) written in the config, as frozen attrs classes.

Every key is ours. The rules (which keys each ``kind`` needs or refuses, ranges, URLs) are in
:mod:`spooky_trio.config.validate_discovery`; what each kind does at run time is
``docs/discovery.md``. ``password`` is a :class:`~spooky_trio.config.schema_auth.Secret`
(its repr, and this class's, show ``***``).
"""

from __future__ import annotations

import attrs

from spooky_trio.config.markers import EXT
from spooky_trio.config.normalize import empty_to_none
from spooky_trio.config.schema_auth import Secret
from spooky_trio.config.schema_health import HealthCheckConfig

#: the accepted ``discovery.kind`` values (exact spelling)
DISCOVERY_KINDS = ("file", "dns_srv", "etcd")
#: the accepted ``discovery.scheme`` values
DISCOVERY_SCHEMES = ("http", "https")


def _redacted(_: object) -> str:
    return repr("***")


@attrs.frozen(kw_only=True)
class BackendDefaults:
    """What a discovered backend (or one the admin API adds) takes when its entry does not
    say: its ``weight`` and its ``health_check`` (none: not actively probed)."""

    weight: int = attrs.field(default=100, metadata=EXT)
    health_check: HealthCheckConfig | None = attrs.field(default=None, metadata=EXT)


@attrs.frozen(kw_only=True)
class DiscoveryConfig:
    """A pool's discovery source; its backends replace the pool's ``backends``, which (when
    given) serve until the source's first good answer.

    ``file``: ``path`` holds YAML or JSON, a list of backends or ``{backends: [...]}``.
    ``dns_srv``: the SRV records of ``name``; the lowest priority group, each target as
    ``scheme://target:port``. ``etcd``: the JSON values ``{address, weight}`` under
    ``prefix`` on the etcd v3 cluster at ``endpoints`` (its JSON gateway), with optional TLS
    (``ca_file``, client ``cert_file``/``key_file``) and auth (``username`` with
    ``password`` or ``password_file``). ``refresh_ms`` is the polling period of ``file`` and
    ``dns_srv`` (an SRV answer's TTL may shorten it) and, for ``etcd``, the reconnect
    backoff cap and the longest a watch runs before it is renewed; ``timeout_ms`` bounds
    every single call (a file read, a DNS query, an etcd request).
    """

    kind: str = attrs.field(metadata=EXT)
    path: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    name: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    scheme: str = attrs.field(default="https", metadata=EXT)
    endpoints: list[str] = attrs.field(factory=list, metadata=EXT)
    prefix: str | None = attrs.field(default=None, metadata=EXT)
    refresh_ms: int = attrs.field(default=30000, metadata=EXT)
    timeout_ms: int = attrs.field(default=2000, metadata=EXT)
    backend_defaults: BackendDefaults = attrs.field(factory=BackendDefaults, metadata=EXT)
    username: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    password: Secret | None = attrs.field(default=None, repr=_redacted, metadata=EXT)
    password_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    ca_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    cert_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    key_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)

    def source_target(self) -> tuple[str, ...]:
        """What names the source's answers: two configs with the same target (and kind) read
        the same set of backends, whatever their refresh, timeout or defaults."""
        if self.kind == "file":
            return (self.path or "",)
        if self.kind == "dns_srv":
            return (self.name or "", self.scheme)
        return (self.prefix or "", *self.endpoints)
