"""YAML features a config has no use for are config errors with a key path and a line
(config/yaml_tree.py), never a traceback: complex keys, recursive and exploding aliases,
odd merge keys, duplicate and non-string keys, huge integers, foreign tags, bad scalars."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest

from spooky_trio import cli
from spooky_trio.config import ConfigError, ConfigIssue, load_config_text
from spooky_trio.config.yaml_tree import MAX_DEPTH, MAX_INT_LITERAL, MAX_VALUES

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions" / "fuzz_config"

VALID = """\
listen: {tls: {cert: c.pem, key: k.pem}}
upstream:
  api:
    route: {path_prefix: /}
    backends: [{id: b, address: "http://127.0.0.1:1"}]
"""


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text))
    assert info.value.issues
    return info.value.issues


def only(text: str) -> ConfigIssue:
    (issue,) = issues_of(text)
    return issue


@pytest.mark.parametrize(
    ("text", "path", "line", "column", "kind"),
    [
        # a key that is a mapping or list holding another container: ruamel raised
        # "TypeError: unhashable type" while checking the key for duplicates
        ("? {a: {b: 1}}\n: x\n", "", 1, 3, "mapping"),
        ("? [a, [b]]\n: x\n", "", 1, 3, "list"),
        ("upstream:\n  ? [a, {b: 1}]\n  : {}\n", "upstream", 2, 5, "list"),
        ("listen: {? {a: [1]}: 1}\n", "listen", 1, 12, "mapping"),
        # flat complex keys did not crash, but reached the schema as ruamel's key objects
        ("upstream:\n  ? {a: 1}\n  : {}\n", "upstream", 2, 5, "mapping"),
        ("{[a]: 1}\n", "", 1, 2, "list"),
    ],
)
def test_complex_keys(text: str, path: str, line: int, column: int, kind: str) -> None:
    issue = only(text)
    assert (issue.path, issue.line, issue.column) == (path, line, column)
    assert issue.message == f"a mapping key must be a name, not a {kind}"


def test_every_complex_key_is_reported() -> None:
    issues = issues_of("? [a, [b]]\n: 1\nupstream:\n  ? {x: {y: 1}}\n  : 2\n")
    assert [(i.path, i.line) for i in issues] == [("", 1), ("upstream", 4)]


def test_fuzzer_complex_key_through_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`spooky-trio check` on the fuzz_config crash input printed ruamel's traceback."""
    path = REGRESSIONS / "complex_mapping_key"
    assert cli.main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"{path}: line 3 col 3: a mapping key must be a name, not a mapping\n"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("a: &x [1, *x]\n", "a[1]"),
        ("a: &x {b: {c: *x}}\n", "a.b.c"),
        # a merge key whose alias is the mapping it sits in: AttributeError in ruamel
        ("upstream: &x\n  <<: *x\n", 'upstream["<<"]'),
        ("upstream:\n  a: &x\n    route: {path_prefix: /}\n    <<: [*x]\n", 'upstream.a["<<"][0]'),
    ],
)
def test_recursive_aliases(text: str, path: str) -> None:
    issue = only(text)
    assert issue.path == path and issue.line is not None
    assert issue.message == "recursive alias: *x refers to a value that contains it"


def test_alias_expansion_is_bounded() -> None:
    """Nine levels of nine aliases are 9^9 values; loading took 24 s for 9^7 before."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    issue = only("\n".join(lines) + "\n")
    assert issue.message == f"aliases expand the document past {MAX_VALUES} values"
    assert issue.path.startswith("l") and issue.line is not None


def test_nesting_is_bounded() -> None:
    """2000 nested lists were a RecursionError in ruamel's composer; nesting built from
    aliases (each level under the limit) is measured too."""
    issue = only("a: " + "[" * 2000 + "]" * 2000 + "\n")
    assert issue.message == f"nested deeper than {MAX_DEPTH} levels" and issue.line == 1
    # at the first '[' too many: ruamel's scanner, quadratic in open '[' (0.5-1.2 s for these
    # 2000, 10 s and more instrumented under the fuzzer), stops there instead of reading on
    assert issue.column == len("a: ") + MAX_DEPTH + 1
    # a and b load (30 + 30 levels and a few); c's five more levels pass the limit
    a, b, c = 30, 30, 5
    text = f"a: &a {'[' * a}1{']' * a}\nb: &b {'[' * b}*a{']' * b}\nc: {'[' * c}*b{']' * c}\n"
    issue = only(text)
    assert issue.message == f"nested deeper than {MAX_DEPTH} levels (through aliases)"
    assert (issue.path, issue.line) == ("c[0][0][0][0][0]", 2)  # where *b is used; b's anchor


def test_a_reused_anchor_is_valid_and_silent() -> None:
    """ruamel printed a ReusedAnchorWarning (with one of its own source lines) on stderr."""
    text = VALID.replace("cert: c.pem, key: k.pem", "cert: &f c.pem, key: &f k.pem").replace("{id: b,", "{id: *f,")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config_text(text)
    assert config.upstream["api"].backends[0].id == "k.pem"  # the latest definition


def test_merge_keys_still_merge() -> None:
    text = VALID + "  web:\n    <<: *api\n    route: {path_prefix: /web}\n"
    config = load_config_text(text.replace("  api:\n", "  api: &api\n"))
    assert config.upstream["web"].backends == config.upstream["api"].backends
    assert config.upstream["web"].route.path_prefix == "/web"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("upstream:\n  <<: 1\n", 2, "expected a mapping or list of mappings for merging"),
        ("upstream:\n  <<: [{}, 2]\n", 2, "expected a mapping for merging"),
        ("s: &s x\nupstream:\n  <<: [*s]\n", 1, "expected a mapping for merging"),
        ("upstream:\n  <<: {}\n  <<: {}\n", 3, "duplicate merge key '<<': the same key as line 2"),
        ("upstream:\n  <<: *nowhere\n", 2, "undefined alias"),
    ],
)
def test_odd_merge_values(text: str, line: int, fragment: str) -> None:
    issue = only(text)
    assert fragment in issue.message and issue.line == line and issue.column is not None


def test_every_duplicate_key_is_reported_with_its_path() -> None:
    text = VALID + "  api:\n    route: {path_prefix: /}\n" + "listen: {}\n"
    issues = issues_of(text)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("upstream.api", 6, "duplicate key 'api': the same key as line 3"),
        ("listen", 8, "duplicate key 'listen': the same key as line 1"),
    ]
    # quoting does not make a different key
    assert only("a: 1\n'a': 2\n").path == "a"


@pytest.mark.parametrize(
    ("text", "path", "line", "column", "message"),
    [
        # keys equal once read: ruamel's own error printed both values, as Python dicts
        ("a: 1\n16: {x: 1}\n0x10: {y: [1, 2]}\n", '["0x10"]', 3, 1, "duplicate key '0x10': the same key as line 2 (written '16')"),
        ("a: 1\ntrue: {x: 1}\nTrue: 2\n", "True", 3, 1, "duplicate key 'True': the same key as line 2 (written 'true')"),
        ("a: 1\n1: a\ntrue: b\n", "true", 3, 1, "duplicate key 'true': the same key as line 2 (written '1')"),
        ("a: 1\n1: a\n1.0: b\n", '["1.0"]', 3, 1, "duplicate key '1.0': the same key as line 2 (written '1')"),
        ("a: 1\n~: a\nnull: b\n", "null", 3, 1, "duplicate key 'null': the same key as line 2 (written '~')"),
        ("upstream:\n  x:\n    route: {a: 1, 0o20: 2, 16: {z: 3}}\n", 'upstream.x.route["16"]', 3, 28,
         "duplicate key '16': the same key as line 3 (written '0o20')"),
        ("log:\n  level: info\n  level: {debug: 1}\n", "log.level", 3, 3, "duplicate key 'level': the same key as line 2"),
    ],
)
def test_duplicate_keys_have_path_line_and_column(text: str, path: str, line: int, column: int, message: str) -> None:
    issue = only(text)
    assert (issue.path, issue.line, issue.column, issue.message) == (path, line, column, message)


def test_a_string_key_and_a_number_key_are_different_keys() -> None:
    # "16" and 16 are two keys (as in the constructed dict): the schema then reports the
    # non-string one, not a duplicate
    issues = issues_of(VALID + "'16': 1\n16: 2\n")
    assert [i.message for i in issues if "duplicate" in i.message] == []


def test_duplicate_keys_through_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(VALID + "performance:\n  0x10: 1\n  16: {a: [1, {b: 2}]}\n")
    assert cli.main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"{path}: performance[\"16\"]: line 8 col 3: duplicate key '16': the same key as line 7 (written '0x10')\n"


def test_non_string_keys_are_schema_errors() -> None:
    issues = issues_of(VALID.replace("  api:\n", "  1:\n") + "2001-12-14: x\n")
    assert {i.path: i.line for i in issues} == {"upstream[1]": 3, '["2001-12-14"]': 6}
    assert "map keys must be strings" in issues[0].message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1" * 5000, "integer literal too long (5000 characters)"),  # int() refused > 4300 digits: ValueError
        ("0x" + "f" * 10_000, "integer literal too long (10002 characters)"),  # read fine, but unprintable in messages
        ("!!int x", "'x' is not a valid !!int"),
        ("!!float x", "'x' is not a valid !!float"),
        ("!!bool maybe", "'maybe' is not a valid !!bool"),  # KeyError in ruamel
        # IndexError in ruamel (fuzz/regressions/fuzz_config/empty_tagged_int)
        ("!!int ", "'' is not a valid !!int"),
        ("!!int 0x", "'0x' is not a valid !!int"),
        ("!!float _", "'_' is not a valid !!float"),
        ("2001-13-45", "'2001-13-45' is not a valid !!timestamp: month must be in 1..12"),
        ("2001-12-14 99:00:00", "is not a valid !!timestamp: hour must be in 0..23"),
    ],
)
def test_unreadable_scalars(value: str, fragment: str) -> None:
    issue = only(f"listen:\n  port: {value}\n")
    assert (issue.path, issue.line, issue.column) == ("listen.port", 2, 9)
    assert fragment in issue.message


def test_longest_integer_literal_reaches_the_range_check() -> None:
    issue = only(VALID.replace("listen: {", f"listen: {{port: {'9' * MAX_INT_LITERAL}, "))
    assert issue.path == "listen.port" and issue.message.startswith("must be")


@pytest.mark.parametrize(
    ("tag", "node", "shown"),
    [
        ("!!python/object/apply:os.system", "{args: [id]}", "!!python/object/apply:os.system on a mapping"),
        ("!!set", "{a, b}", "!!set on a mapping"),
        ("!!omap", "[a: 1]", "!!omap on a list"),
        ("!!binary", "aGVsbG8=", "!!binary on a scalar"),
        ("!custom", "x", "!custom on a scalar"),
        ("!!str", "{a: 1}", "!!str on a mapping"),
    ],
)
def test_foreign_tags(tag: str, node: str, shown: str) -> None:
    # a tagged mapping under a known key loaded silently before (its tag dropped)
    text = VALID.replace("listen: {tls: {cert: c.pem, key: k.pem}}", f"listen: {{tls: {{cert: c.pem, key: k.pem}}, address: {tag} {node}}}")
    issue = only(text)
    assert issue.path == "listen.address" and issue.line == 1
    assert issue.message.startswith(f"unsupported YAML tag {shown}")


def test_plain_core_tags_are_accepted() -> None:
    text = VALID.replace("listen: {", "listen: {port: !!int 8443, address: !!str 127.0.0.1, ")
    config = load_config_text(text.replace("  api:", "  !!str api:"))
    assert (config.listen.port, config.listen.address, list(config.upstream)) == (8443, "127.0.0.1", ["api"])


@pytest.mark.parametrize(("text", "line", "column"), [("a: \x00\n", 1, 4), ("a: 1\nb: x\x07\n", 2, 5)])
def test_forbidden_characters_have_a_line(text: str, line: int, column: int) -> None:
    issue = only(text)
    assert (issue.line, issue.column) == (line, column) and "unacceptable character" in issue.message
