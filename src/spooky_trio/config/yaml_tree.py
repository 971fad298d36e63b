"""YAML text -> ruamel round-trip tree, with every YAML-level problem a :class:`ConfigError`.

ruamel.yaml accepts far more than a config needs and its constructor is not hardened
against that: a mapping key that is itself a mapping or list with a nested container
(``? {a: {b: 1}}``) raises ``TypeError: unhashable type``, ``!!int x`` or ``2001-13-45``
a ``ValueError``, ``!!bool maybe`` a ``KeyError``, a merge key whose alias refers to the
mapping it sits in an ``AttributeError``; deep nesting is a ``RecursionError`` and a few
lines of aliases can expand to millions of values. So the composed node graph is checked
*before* anything is constructed (:class:`_CheckedConstructor`), and every problem becomes
a :class:`ConfigIssue` with the key path and the line/column where it was written:

- nesting deeper than :data:`MAX_DEPTH` (ruamel's composer limit, the scanner's for flow
  collections, and again through aliases);
- a recursive alias (a value that contains itself, directly or through ``<<``);
- aliases expanding the document past :data:`MAX_VALUES` values;
- a mapping key that is a mapping or a list (config keys are names);
- the same key twice in one mapping, compared as read (``16`` and ``0x10``, ``true`` and
  ``True``, ``1`` and ``1.0`` are the same key, as the constructed dict would see them), or
  two ``<<`` merge keys; each repeat is reported with its path, line and column and the line
  of the first, never with ruamel's text (which prints the values as Python dicts);
- a tag other than the plain scalar, list and mapping ones (``!!python/...``, ``!!set``,
  ``!!omap``, ``!!binary``, ``!custom``...), or a scalar its tag cannot read (``!!int x``,
  an impossible date), or an integer literal longer than :data:`MAX_INT_LITERAL` characters.

A reused anchor is valid YAML (an alias means the latest definition) and not reported.
Non-string scalar keys (``1:``, ``null:``) are left to the schema, which reports them as
unknown keys. When any problem is found here nothing is constructed, so the schema is not
checked: these issues are the whole report, like a syntax error.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import RoundTripScanner

from spooky_trio.config.issues import (
    ConfigError,
    ConfigIssue,
    KeyPath,
    format_path,
    sort_issues,
)

#: deepest nesting of mappings/lists (a real config is under 10 levels deep)
MAX_DEPTH = 64
#: most values (scalars, mappings, lists) the document may expand to through aliases
MAX_VALUES = 100_000
#: longest integer literal; keeps every integer printable in messages (str(int) is limited
#: to 4300 digits, and a hex literal has no such limit when read)
MAX_INT_LITERAL = 100

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MERGE_TAG = _CORE + "merge"
_KIND = {ScalarNode: "scalar", SequenceNode: "list", MappingNode: "mapping"}
_ALLOWED = {ScalarNode: _SCALAR_TAGS, SequenceNode: frozenset([_CORE + "seq"]), MappingNode: frozenset([_CORE + "map"])}


def parse_yaml(text: str) -> Any:
    """Parse one YAML document into ruamel's round-trip tree (None for an empty document).

    Raises :class:`ConfigError`: one issue for a syntax error, else every problem listed in
    the module docstring. Never raises anything else for any ``text``.
    """
    yaml = YAML(typ="rt")
    yaml.Scanner = _FlowDepthScanner
    yaml.Constructor = _CheckedConstructor
    yaml.allow_duplicate_keys = False  # backstop for keys equal once read (0x10 and 16)
    yaml.max_depth = MAX_DEPTH
    # an anchor defined again is valid YAML (an alias means the latest); ruamel's warning
    # would print its own source line on stderr, like a traceback
    yaml.composer.warn_double_anchors = False
    try:
        return yaml.load(text)
    except _GraphProblems as exc:
        raise ConfigError(sort_issues(exc.issues)) from None
    except MaxDepthExceededError as exc:
        raise ConfigError([_marked_issue((), exc.problem_mark, f"nested deeper than {MAX_DEPTH} levels")]) from None
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc)]) from None
    except ReaderError as exc:  # a character YAML forbids (NUL, other controls, lone surrogates)
        line, column = _line_column(text, exc.position)
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError([ConfigIssue("", line, column, f"invalid YAML: unacceptable character {what} ({exc.reason})")]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigIssue("", None, None, f"invalid YAML: {exc}")]) from None


def _syntax_issue(exc: MarkedYAMLError) -> ConfigIssue:
    """An ``invalid YAML`` issue at the error's mark (no key path: the tree is unknown)."""
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    message = "invalid YAML: " + ("; ".join(parts) if parts else "syntax error")
    return _marked_issue((), mark, message)


def _marked_issue(path: KeyPath, mark: Any, message: str) -> ConfigIssue:
    if mark is None:
        return ConfigIssue(format_path(path), None, None, message)
    return ConfigIssue(format_path(path), mark.line + 1, mark.column + 1, message)


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at ``position`` of ``text``."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _FlowDepthScanner(RoundTripScanner):
    """ruamel's round-trip scanner, stopping at :data:`MAX_DEPTH` nested flow collections.

    The scanner re-checks every pending simple key (one per open ``[``) at every token and
    reads ahead through a run of ``[`` before the composer sees the first, so 4000 nested
    ``[`` took seconds (quadratic) before the composer's depth limit could apply.
    """

    def fetch_flow_collection_start(self, *args: Any, **kwargs: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise MaxDepthExceededError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.reader.get_mark())
        super().fetch_flow_collection_start(*args, **kwargs)


class _GraphProblems(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(f"{len(issues)} YAML problems")
        self.issues = issues


class _CheckedConstructor(RoundTripConstructor):
    """ruamel's round-trip constructor, run only on a node graph :class:`_GraphCheck` passed."""

    def construct_document(self, node: Any) -> Any:
        issues = _GraphCheck(self).run(node)
        if issues:
            raise _GraphProblems(issues)
        return super().construct_document(node)


class _GraphCheck:
    """One depth-first walk of the composed graph; shared (aliased) nodes are walked once.

    ``_done`` memoizes (values, height) per node so that the expanded size and depth of a
    graph of aliases are computed in time linear in the text; ``_active`` holds the nodes
    on the current path (a node met again there is a recursive alias).
    """

    def __init__(self, constructor: RoundTripConstructor) -> None:
        self._constructor = constructor
        self._issues: list[ConfigIssue] = []
        self._done: dict[int, tuple[int, int]] = {}
        self._active: set[int] = set()
        self._values = 0
        self._too_big = self._too_deep = False

    def run(self, root: Node) -> list[ConfigIssue]:
        self._visit(root, (), 1)
        return self._issues

    def _add(self, path: KeyPath, node: Node, message: str) -> None:
        self._issues.append(_marked_issue(path, node.start_mark, message))

    def _count(self, values: int, path: KeyPath, node: Node) -> None:
        self._values += values
        if self._values > MAX_VALUES and not self._too_big:
            self._too_big = True
            self._add(path, node, f"aliases expand the document past {MAX_VALUES} values")

    def _visit(self, node: Node, path: KeyPath, depth: int) -> tuple[int, int]:
        """Check ``node`` (at nesting ``depth``); returns its expanded (values, height)."""
        key = id(node)
        if key in self._active:
            self._add(path, node, f"recursive alias: *{node.anchor} refers to a value that contains it")
            return 1, 1
        if key in self._done:
            values, height = self._done[key]
            self._count(values, path, node)
            self._check_depth(depth + height - 1, path, node)
            return values, height
        if self._check_depth(depth, path, node):
            return 1, 1
        self._count(1, path, node)
        self._active.add(key)
        values, height = 1, 1
        if not self._check_tag(node, path, in_key=False):
            for child_values, child_height in self._children(node, path, depth):
                values += child_values
                height = max(height, child_height + 1)
        self._active.discard(key)
        self._done[key] = (values, height)
        return values, height

    def _check_depth(self, depth: int, path: KeyPath, node: Node) -> bool:
        if depth <= MAX_DEPTH:
            return False
        if not self._too_deep:
            self._too_deep = True
            self._add(path, node, f"nested deeper than {MAX_DEPTH} levels (through aliases)")
        return True

    def _children(self, node: Node, path: KeyPath, depth: int) -> Any:
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                yield self._visit(item, path + (index,), depth + 1)
        elif isinstance(node, MappingNode):
            seen: dict[object, Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    kind = _KIND.get(type(key_node), "node")
                    self._add(path, key_node, f"a mapping key must be a name, not a {kind}")
                    continue
                if self._check_tag(key_node, path, in_key=True):
                    continue
                name = key_node.value
                identity = self._key_identity(key_node)
                first = seen.get(identity)
                if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: its entries join this mapping
                    if first is not None:
                        self._add(path + ("<<",), key_node, f"duplicate merge key '<<': the same key as line {first.start_mark.line + 1}")
                    seen.setdefault(identity, key_node)
                    yield self._visit(value_node, path + ("<<",), depth + 1)
                    continue
                child = path + (name,)
                if first is not None:
                    same = "" if first.value == name else f" (written {first.value!r})"
                    self._add(child, key_node, f"duplicate key {name!r}: the same key as line {first.start_mark.line + 1}{same}")
                seen.setdefault(identity, key_node)
                yield self._visit(value_node, child, depth + 1)

    def _key_identity(self, node: ScalarNode) -> object:
        """What makes two keys of one mapping the same: the text of a string key, the value
        read for any other scalar (a readable one: :meth:`_check_tag` ran first), tagged so a
        string never equals a number."""
        tag = node.tag or ""
        if tag in (_CORE + "str", _MERGE_TAG):
            return (tag, node.value)
        value = self._constructor.construct_object(node)
        try:
            hash(value)
        except TypeError:
            return (tag, node.value)
        return ("value", value)

    def _check_tag(self, node: Node, path: KeyPath, *, in_key: bool) -> bool:
        """Report an unsupported tag or an unreadable scalar; True when ``node`` is bad."""
        tag = node.tag or ""
        allowed = _ALLOWED.get(type(node), frozenset())
        if tag == _MERGE_TAG and in_key:
            return False
        if tag not in allowed:
            self._add(path, node, f"unsupported YAML tag {_short_tag(tag)} on a {_KIND.get(type(node), 'node')}: "
                      "a config uses plain strings, numbers, booleans, lists and mappings")
            return True
        if tag == _CORE + "int" and len(node.value) > MAX_INT_LITERAL:
            self._add(path, node, f"integer literal too long ({len(node.value)} characters)")
            return True
        if isinstance(node, ScalarNode) and tag != _CORE + "str":
            try:
                self._constructor.construct_object(node)
            except MarkedYAMLError as exc:
                self._add(path, node, f"{node.value!r} is not a valid {_short_tag(tag)}: {exc.problem}")
                return True
            except Exception as exc:  # noqa: BLE001 - any failure means "not a value of the tag"
                # ruamel reads scalars with int(), float(), datetime(), a dict of booleans and
                # string indexing (`!!int +`, `!!float ''`: IndexError, found by fuzz_config);
                # whatever it raises on one tagged scalar, the text is not a value of the tag
                detail = f": {exc}" if isinstance(exc, ValueError) else ""
                self._add(path, node, f"{node.value!r} is not a valid {_short_tag(tag)}{detail}")
                return True
        return False
