"""``spooky-trio check --spooky-strict``: what in a valid config Spooky would not accept.

A config that uses none of our extensions runs on Spooky too (``extensions.md``); this finds
every place where that is not so, one :class:`ConfigIssue` each, in file order:

1. every extension key the config writes: a schema field marked
   :data:`~spooky_trio.config.markers.EXTENSION`, found by walking the document as written
   against the schema classes (so a key a later feature adds and marks is found too);
2. every spelling of an enum that only we accept (:attr:`Spelling.ours`, e.g. ``warning``,
   or a case-insensitive value with whitespace around it: :func:`~spooky_trio.config.spellings.is_ours`);
3. every finding of :data:`PORTABILITY_RULES`: rules Spooky enforces that we deliberately
   relax. A feature that relaxes another Spooky rule appends its check there.

It runs on a config that already loaded; the text is read again to see keys as written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from spooky_trio.config.checks import Problem, Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap, sort_issues
from spooky_trio.config.load import read_tree
from spooky_trio.config.markers import EXTENSION
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_walk import attrs_classes, container_of, field_for
from spooky_trio.config.spellings import canonical, is_ours


#: (key path, message, report at the key rather than the value)
_Finding = tuple[KeyPath, str, bool]


def _written(data: object, classes: list[type], path: KeyPath) -> Iterator[_Finding]:
    """Each extension key and each spelling of ours in ``data``, a mapping written for one
    of the attrs ``classes``."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        found = field_for(classes, key)
        if found is None:
            continue
        attribute, tp = found
        child = path + (key,)
        if attribute.metadata.get(EXTENSION):
            yield child, "a spooky-trio extension key (Spooky rejects it)", True
        yield from _value(value, tp, child)


def _value(value: object, tp: object, path: KeyPath) -> Iterator[_Finding]:
    classes = attrs_classes(tp)
    if classes:
        yield from _written(value, classes, path)
        return
    container = container_of(tp)
    if container is not None:
        element, item = container
        if element == "[]" and isinstance(value, list):
            for index, entry in enumerate(value):
                yield from _value(entry, item, path + (index,))
        elif element == "<name>" and isinstance(value, dict):
            for name, entry in value.items():
                yield from _value(entry, item, path + (name,))
        return
    if isinstance(value, str) and is_ours(tp, value):
        if value != value.strip():
            yield path, f"{value!r} has whitespace around it (Spooky's validator does not trim it: write {value.strip()!r})", False
        else:
            yield path, f"{value!r} is a spooky-trio spelling (Spooky: {canonical(tp, value)!r})", False


def _shared_backend_addresses(config: Config, out: Problems) -> None:
    # extensions.md section 7: we allow one backend address in several pools; Spooky rejects
    # that. Compared as written, as Spooky compares them.
    first: dict[str, str] = {}
    for pool_name, pool in config.upstream.items():
        for index, backend in enumerate(pool.backends):
            owner = first.setdefault(backend.address, pool_name)
            if owner != pool_name:
                out.add(
                    ("upstream", pool_name, "backends", index, "address"),
                    f"{backend.address} is also a backend of pool {owner!r} (Spooky rejects a backend address in several pools)",
                )


def _request_body_beyond_stream_window(config: Config, out: Problems) -> None:
    # spooky-head.md section 5 makes this an error: Spooky reads a request body within the
    # stream's initial window. We stream bodies and grow the window as they are consumed, so
    # larger bodies work here with bounded memory; only a config meant for Spooky must obey.
    perf = config.performance
    if perf.max_request_body_bytes > perf.quic_initial_max_stream_data:
        out.add(
            ("performance", "max_request_body_bytes"),
            f"Spooky requires <= quic_initial_max_stream_data ({perf.max_request_body_bytes} vs "
            f"{perf.quic_initial_max_stream_data}); spooky-trio streams request bodies and accepts it",
            ("performance", "quic_initial_max_stream_data"),
        )


def _is_zero(value: int) -> bool:
    return value == 0


#: ranges Spooky's validator enforces that we relax, since the value means something here:
#: (key path, Spooky's rule, True when a value breaks it)
_SPOOKY_RANGES: tuple[tuple[KeyPath, str, Callable[[int], bool]], ...] = (
    (("performance", "shutdown_drain_timeout_ms"), "> 0", _is_zero),  # in-flight work cancelled at once
    (("performance", "h2_pool_max_idle_per_backend"), "> 0", _is_zero),  # no idle upstream connection kept
    (("resilience", "route_queue", "shed_retry_after_seconds"), "> 0", _is_zero),  # overload 503s: Retry-After: 0
    (("resilience", "watchdog", "drain_grace_ms"), "> 0", _is_zero),  # the restart command runs at once
    (("resilience", "watchdog", "restart_cooldown_ms"), "> 0", _is_zero),  # no pause between restarts
    (("performance", "worker_threads"), "<= 1024", lambda value: value > 1024),
    (("performance", "control_plane_threads"), "<= 1024", lambda value: value > 1024),
    (("performance", "packet_shards_per_worker"), "<= 256", lambda value: value > 256),
)


def _spooky_ranges(config: Config, out: Problems) -> None:
    for path, requirement, broken in _SPOOKY_RANGES:
        value: object = config
        for step in path:
            value = getattr(value, str(step))
        assert isinstance(value, int)
        if broken(value):
            out.add(path, f"Spooky requires {requirement} (got {value})")
    for pool_name, pool in config.upstream.items():
        for index, backend in enumerate(pool.backends):
            check = backend.health_check
            if check is not None and check.cooldown_ms == 0:  # probing resumes at once
                out.add(("upstream", pool_name, "backends", index, "health_check", "cooldown_ms"), "Spooky requires > 0 (got 0)")


def _listen_written(config: Config, out: Problems) -> None:
    # Spooky's top-level ``listen`` has no default: a config with only ``listeners`` fails
    # there (an empty ``listen: {}`` is enough). Ours defaults it.
    if config.listeners and ("listen",) not in config.source_positions:
        out.add(("listeners",), "Spooky also requires a top-level listen, unused beside listeners (listen: {} will do)")


def _pools_without_route_or_backends(config: Config, out: Problems) -> None:
    # extensions.md sections 1 and 7: a pool reached only through a split or a mirror needs
    # no route, one that answers itself (direct_response, redirect) no backends; Spooky
    # requires both in every pool
    for name, pool in config.upstream.items():
        if pool.route is None:
            out.add(("upstream", name), "has no route (Spooky requires one in every pool)")
        if not pool.backends and pool.discovery is None:  # (a discovery block is reported as itself)
            out.add(("upstream", name), "has no backends (Spooky requires at least one in every pool)")


#: rules Spooky enforces that spooky-trio relaxes; each adds its findings to ``out``
PORTABILITY_RULES: list[Callable[[Config, Problems], None]] = [
    _shared_backend_addresses,
    _request_body_beyond_stream_window,
    _spooky_ranges,
    _listen_written,
    _pools_without_route_or_backends,
]


def spooky_strict_issues(config: Config, text: str, source: str = "<string>") -> list[ConfigIssue]:
    """What keeps ``config`` (loaded from ``text``) from loading unchanged on Spooky."""
    data, positions = read_tree(text, source)
    issues = [positions.issue(path, message, at_key=at_key) for path, message, at_key in _written(data, [Config], ())]
    rules = Problems()
    for rule in PORTABILITY_RULES:
        rule(config, rules)
    located = PositionMap(config.source_positions)
    issues += [_issue(located, problem) for problem in rules.items]
    return sort_issues(issues)


def _issue(positions: PositionMap, problem: Problem) -> ConfigIssue:
    return positions.issue(problem.path, problem.message, related=problem.related)
