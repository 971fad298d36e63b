"""Loading: YAML text -> validated, resolved :class:`Config`, or :class:`ConfigError`.

Pipeline:

1. ruamel.yaml (round-trip) parses the text (:func:`~spooky_trio.config.yaml_tree.parse_yaml`):
   a syntax error becomes one issue with line/col, and the YAML features a config has no use
   for (complex keys, recursive or exploding aliases, foreign tags, unreadable scalars,
   duplicate keys) become issues with their key path and line/col before anything is built.
2. The tree is copied into plain Python data while recording where each key and value was
   written (:class:`PositionMap`).
3. cattrs structures the data (strict types, unknown keys rejected). Every structuring error
   is reported; values that failed are then dropped (so defaults apply, or the enclosing
   entry is dropped) and structuring is retried, so that the range and cross-field rules can
   still run on the rest of the file. Rule violations that involve a dropped value are not
   reported, since they would describe a default rather than the file.
4. :func:`~spooky_trio.config.validate.validate` checks ranges and cross-field rules.
5. Fallbacks are resolved: each pool's ``load_balancing`` (own, else top-level, else
   round-robin) and ``adaptive_admission.max_limit`` (else ``max(global_inflight_limit,
   min_limit)``, Spooky's effective ceiling).

Relative file paths inside the config are kept as written; they are resolved against the
current working directory of the process when the files are opened (not against the
directory of the config file).
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any

import attrs
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.scalarbool import ScalarBoolean

from spooky_trio.config.checks import Problem
from spooky_trio.config.convert import (
    MISSING_KEY,
    UNKNOWN_KEY,
    placeholder_for,
    structure_config,
    structure_errors,
)
from spooky_trio.config.issues import (
    ConfigError,
    ConfigIssue,
    KeyPath,
    PositionMap,
    SourcePosition,
    sort_issues,
)
from spooky_trio.config.schema import Config
from spooky_trio.config.validate import validate
from spooky_trio.config.yaml_tree import parse_yaml

_MISSING = object()
_MAX_REPAIR_ROUNDS = 16
_RESTART_HOOK_PATH: KeyPath = ("resilience", "watchdog", "restart_hook")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and load the config file at ``path``.

    Raises :class:`ConfigError` listing every problem; a missing or unreadable file (or one
    that is not UTF-8) is a single issue with an empty key path.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue("", None, None, f"cannot read config file {os.fspath(path)!s}: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue("", None, None, f"config file {os.fspath(path)!s} is not valid UTF-8 (byte {exc.start})")]
        ) from None
    return load_config_text(text, source=os.fspath(path))


def read_tree(text: str, source: str = "<string>") -> tuple[dict[str, Any], PositionMap]:
    """Steps 1-2: YAML ``text`` as plain data (the top-level mapping) and the position of
    every key and value, before the schema is applied.

    Raises :class:`ConfigError` for a YAML problem, an empty document or a top level that is
    not a mapping.
    """
    tree = parse_yaml(text)
    if tree is None:
        raise ConfigError([ConfigIssue("", None, None, f"{source} is empty: at least 'upstream' is required")])
    positions = PositionMap()
    positions.add((), SourcePosition(1, 1, 1, 1, True))
    data = _to_plain(tree, (), positions)
    if not isinstance(data, dict):
        line, column = _node_position(tree)
        raise ConfigError([ConfigIssue("", line, column, f"the top level of {source} must be a mapping of sections")])
    return data, positions


def read_document(text: str) -> tuple[Any, PositionMap]:
    """Any YAML (or JSON) document ``text`` as plain data (None when empty) and the
    position of every key and value, with the same YAML rules as a config file (a
    discovery source's backend list: ``config/backend_entries.py``). Raises
    :class:`ConfigError` for a YAML problem."""
    tree = parse_yaml(text)
    positions = PositionMap()
    positions.add((), SourcePosition(1, 1, 1, 1, True))
    return (None if tree is None else _to_plain(tree, (), positions)), positions


def load_config_text(text: str, source: str = "<string>") -> Config:
    """Load a config from YAML ``text``; ``source`` names the document in whole-file messages.

    Raises :class:`ConfigError` listing every problem, ordered by position in the text.
    """
    data, positions = read_tree(text, source)
    issues: list[ConfigIssue] = []
    hook = _get(data, _RESTART_HOOK_PATH)
    if hook is not _MISSING:
        if hook is not None:
            issues.append(
                positions.issue(
                    _RESTART_HOOK_PATH,
                    "restart_hook (a shell command) is not supported: use restart_command, an argv list run without a shell",
                    at_key=True,
                )
            )
        _delete(data, _RESTART_HOOK_PATH)

    config, dropped, structure_issues = _structure_with_repair(data, positions)
    issues.extend(structure_issues)
    if config is not None:
        for problem in validate(config):
            if not _overlaps(problem, dropped):
                issues.append(positions.issue(problem.path, problem.message, related=problem.related))
    if issues or config is None:
        raise ConfigError(sort_issues(issues))
    return _resolve(config, text, positions)


def _node_position(node: Any) -> tuple[int | None, int | None]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


def _plain_scalar(value: Any) -> Any:
    """Strip ruamel's scalar subclasses (ScalarBoolean is an int subclass: check it first).

    An explicit ``!!str`` scalar is a ``TaggedScalar`` (parse_yaml lets no other tag through).
    """
    if isinstance(value, TaggedScalar):
        return str(value.value)
    if isinstance(value, (bool, ScalarBoolean)):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _to_plain(node: Any, path: KeyPath, positions: PositionMap) -> Any:
    """Copy a ruamel tree into dict/list/scalars, recording positions of every entry."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for raw_key, value in node.items():
            key = _plain_scalar(raw_key)
            try:
                hash(key)
            except TypeError:
                key = str(key)
            child = path + (key,)
            try:
                # ruamel's CommentedMap (a dict) carries positions in .lc
                key_line, key_col = node.lc.key(raw_key)  # type: ignore[attr-defined]
                value_line, value_col = node.lc.value(raw_key)  # type: ignore[attr-defined]
                positions.add(
                    child,
                    SourcePosition(key_line + 1, key_col + 1, value_line + 1, value_col + 1, isinstance(value, (dict, list))),
                )
            except (AttributeError, KeyError, TypeError):
                pass  # merged (<<) keys carry no position of their own
            out[key] = _to_plain(value, child, positions)
        return out
    if isinstance(node, list):
        items: list[Any] = []
        for index, value in enumerate(node):
            child = path + (index,)
            try:
                line, col = node.lc.item(index)  # type: ignore[attr-defined]  # ruamel's CommentedSeq
                positions.add(child, SourcePosition(line + 1, col + 1, line + 1, col + 1, isinstance(value, (dict, list))))
            except (AttributeError, KeyError, TypeError):
                pass
            items.append(_to_plain(value, child, positions))
        return items
    return _plain_scalar(node)


def _get(data: Any, path: KeyPath) -> Any:
    for element in path:
        if isinstance(data, dict) and element in data:
            data = data[element]
        elif isinstance(data, list) and isinstance(element, int) and 0 <= element < len(data):
            data = data[element]
        else:
            return _MISSING
    return data


def _delete(data: Any, path: KeyPath) -> None:
    parent = _get(data, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _drop_target(data: Any, path: KeyPath) -> KeyPath | None:
    """The closest path at or above ``path`` that exists and is a mapping entry (None: give up)."""
    candidate = path
    while candidate:
        if _get(data, candidate) is not _MISSING and isinstance(_get(data, candidate[:-1]), dict):
            return candidate
        candidate = candidate[:-1]
    return None


def _structure_with_repair(
    data: dict[str, Any], positions: PositionMap
) -> tuple[Config | None, list[KeyPath], list[ConfigIssue]]:
    """Structure ``data``; returns (config or None, dropped paths, structuring issues).

    Issues come from the first attempt only (cattrs reports every error in one pass); later
    attempts only serve to obtain a config on which cross-field rules can run.
    """
    working = copy.deepcopy(data)
    dropped: list[KeyPath] = []
    issues: list[ConfigIssue] = []
    for attempt in range(_MAX_REPAIR_ROUNDS):
        try:
            return structure_config(working), dropped, issues
        except Exception as exc:  # noqa: BLE001 - cattrs raises exception groups of user errors
            errors = list(structure_errors(exc))
        if attempt == 0:
            for error in errors:
                message = error.message
                if error.kind == MISSING_KEY and error.path in positions:
                    message = "required key: null is not allowed here"
                issues.append(positions.issue(error.path, message, at_key=error.kind == UNKNOWN_KEY))
        targets: dict[KeyPath, bool] = {}  # target -> whether it can affect rules
        filled = False
        for path, kind, _, expected in errors:
            parent = _get(working, path[:-1])
            stand_in = placeholder_for(expected) if kind == MISSING_KEY else None
            if stand_in is not None and isinstance(parent, dict) and parent.get(path[-1]) is None:
                parent[path[-1]] = stand_in  # keep the rest of the entry checkable
                dropped.append(path)
                filled = True
                continue
            target = _drop_target(working, path[:-1] if kind == MISSING_KEY else path)
            if target is not None:
                # an unknown key never fed a rule, so dropping it needs no suppression
                targets[target] = targets.get(target, False) or kind != UNKNOWN_KEY
        if not targets and not filled:
            break
        for target, affects_rules in targets.items():
            if any(other != target and target[: len(other)] == other for other in targets):
                continue  # an ancestor is dropped as well
            _delete(working, target)
            if affects_rules:
                dropped.append(target)
    return None, dropped, issues


def _overlaps(problem: Problem, dropped: list[KeyPath]) -> bool:
    for path in problem.paths():
        for gone in dropped:
            shorter = min(len(path), len(gone))
            if path[:shorter] == gone[:shorter]:
                return True
    return False


def _resolve(config: Config, text: str, positions: PositionMap) -> Config:
    """Fill loader-resolved defaults and the source metadata."""
    pools = {
        name: attrs.evolve(pool, load_balancing=pool.effective_load_balancing(config.load_balancing))
        for name, pool in config.upstream.items()
    }
    resilience = config.resilience
    admission = resilience.adaptive_admission
    if admission.max_limit is None:
        ceiling = max(config.performance.global_inflight_limit, admission.min_limit)
        admission = attrs.evolve(admission, max_limit=ceiling)
        resilience = attrs.evolve(resilience, adaptive_admission=admission)
    return attrs.evolve(
        config,
        upstream=pools,
        resilience=resilience,
        source_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        source_positions=positions.as_dict(),
    )
