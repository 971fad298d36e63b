"""Backends named outside the config file: a discovery file's list, an etcd value, an admin
API body. Each is checked with the config's own structuring (strict types, unknown keys
refused) and the config backends' rules (``validate_backend.py``), so a backend that would
be refused in ``backends`` is refused here too, with the same message.

A :class:`BackendEntry` is what the source said; the pool's ``discovery.backend_defaults``
fill in what it did not (:meth:`BackendEntry.resolve`).
"""

from __future__ import annotations

import attrs

from spooky_trio.config.checks import Problems
from spooky_trio.config.convert import CONVERTER, structure_errors
from spooky_trio.config.issues import ConfigError, ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.load import read_document
from spooky_trio.config.schema import BackendConfig, HealthCheckConfig
from spooky_trio.config.schema_discovery import BackendDefaults
from spooky_trio.config.validate_backend import validate_backend_fields

#: the longest backend id a source or the admin API may name (it is a metric label)
MAX_ID_LENGTH = 200


class EntryError(ValueError):
    """Backends that cannot be used; ``issues`` says where and why (never empty)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


@attrs.frozen
class BackendEntry:
    """One backend as its source named it; ``None``: take the pool's default."""

    id: str
    address: str
    weight: int | None = None
    health_check: HealthCheckConfig | None = None

    def resolve(self, defaults: BackendDefaults) -> BackendConfig:
        """The backend with ``defaults`` for what the entry left out."""
        return BackendConfig(
            id=self.id,
            address=self.address,
            weight=defaults.weight if self.weight is None else self.weight,
            health_check=defaults.health_check if self.health_check is None else self.health_check,
        )

    def describe(self) -> dict[str, object]:
        """The entry as JSON (``/admin/runtime``)."""
        return {"id": self.id, "address": self.address, "weight": self.weight}


@attrs.frozen(kw_only=True)
class _Fields:
    """What an entry may hold (structured with the config's converter)."""

    id: str | None = None
    address: str
    weight: int | None = None
    health_check: HealthCheckConfig | None = None


def id_error(backend_id: str) -> str | None:
    """Why ``backend_id`` cannot name a discovered backend, or None."""
    if not backend_id.strip():
        return "must not be empty"
    if len(backend_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not backend_id.isprintable():
        return f"{backend_id!r} holds control characters"
    return None


def parse_entry(data: object, *, backend_id: str | None = None) -> BackendEntry:
    """One backend from plain data (a JSON object): ``{address, weight, health_check}``,
    and ``id`` unless ``backend_id`` gives it (then an ``id`` key, if any, must equal it).
    Raises :class:`EntryError`."""
    problems: list[ConfigIssue] = []
    entry = _entry(data, (), PositionMap(), problems, backend_id)
    if entry is None:
        raise EntryError(problems)
    return entry


def parse_document(text: str) -> list[BackendEntry]:
    """The backends of a discovery file: YAML or JSON holding a list of backends or
    ``{backends: [...]}``, each with a unique ``id``. Raises :class:`EntryError` listing
    every problem with its place (an empty list is not an error here)."""
    try:
        data, positions = read_document(text)
    except ConfigError as exc:
        raise EntryError(exc.issues) from None
    prefix: KeyPath = ()
    if isinstance(data, dict) and set(data) == {"backends"}:
        data, prefix = data["backends"], ("backends",)
    if data is None:
        return []
    if not isinstance(data, list):
        raise EntryError([positions.issue(prefix, "expected a list of backends, or a mapping with only the key backends")])
    problems: list[ConfigIssue] = []
    entries: list[BackendEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data):
        raw_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(raw_id, str) and raw_id in seen:
            problems.append(positions.issue(prefix + (index, "id"), f"duplicate backend id {raw_id!r} (also [{seen[raw_id]}])"))
            continue
        if isinstance(raw_id, str):
            seen[raw_id] = index
        entry = _entry(item, prefix + (index,), positions, problems, None)
        if entry is not None:
            entries.append(entry)
    if problems:
        raise EntryError(problems)
    return entries


def _entry(data: object, path: KeyPath, positions: PositionMap, problems: list[ConfigIssue],
           backend_id: str | None) -> BackendEntry | None:
    try:
        fields = CONVERTER.structure(data, _Fields)
    except Exception as exc:  # noqa: BLE001 - cattrs raises exception groups of user errors
        for error in structure_errors(exc):
            problems.append(positions.issue(path + error.path, error.message))
        return None
    found = len(problems)
    if backend_id is None:
        if fields.id is None:
            problems.append(positions.issue(path + ("id",), "required key is missing"))
            return None
        backend_id = fields.id
    elif fields.id is not None and fields.id != backend_id:
        problems.append(positions.issue(path + ("id",), f"{fields.id!r} differs from the backend's id {backend_id!r}"))
    bad_id = id_error(backend_id)
    if bad_id is not None:
        problems.append(positions.issue(path + ("id",), bad_id))
    out = Problems()
    validate_backend_fields(out, path, BackendConfig(id=backend_id, address=fields.address,
                                                     weight=1 if fields.weight is None else fields.weight,
                                                     health_check=fields.health_check))
    problems.extend(positions.issue(problem.path, problem.message) for problem in out.items)
    if len(problems) > found:
        return None
    return BackendEntry(backend_id, fields.address, fields.weight, fields.health_check)

