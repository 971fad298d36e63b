"""docs/configuration.md is the whole schema: every key the schema classes accept has its row.

The keys come from the attrs classes themselves (``config/schema_walk.py``), so a key a later
feature adds to any schema class fails this test until the reference documents it. A row is
a table line whose first cell is the key's full path in backticks
(``| `upstream.<pool>.backends[].weight` | ...``); its third cell is the default, checked
against the field's default; ``(ext)`` and ``(no effect)`` must match the field markers
(``config/markers.py``). The examples at the end are the text of conf/spooky-*.yaml.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from spooky_trio.config.schema_walk import SchemaKey, schema_keys

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `([^`]+)` \|(.*)$", re.MULTILINE)


def rows() -> dict[str, list[str]]:
    """Documented key path -> its cells after the first."""
    found: dict[str, list[str]] = {}
    for path, rest in _ROW.findall(REFERENCE.read_text()):
        assert path not in found, f"{path} has two rows"
        found[path] = [cell.strip() for cell in rest.rstrip("|").split("|")]
    return found


KEYS = schema_keys()


def test_every_schema_key_has_a_row_and_every_row_a_key() -> None:
    documented = set(rows())
    schema = {key.dotted for key in KEYS}
    assert not schema - documented, f"keys the reference lacks: {sorted(schema - documented)}"
    assert not documented - schema, f"rows for keys the schema does not have: {sorted(documented - schema)}"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.dotted)
def test_row_default_and_markers(key: SchemaKey) -> None:
    cells = rows()[key.dotted]
    assert len(cells) == 4, f"{key.dotted}: expected type, default, rule, effect"
    _, default, _, effect = cells
    value = key.attribute.default
    if value is attrs.NOTHING:
        assert default == "required"
    elif value is None:
        assert default == "none"
    elif not isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        assert default.split(" (")[0] == _shown(value), f"{key.dotted}: default {value!r} written {default!r}"
    elif value.factory in (list, dict):
        assert default == ("`[]`" if value.factory is list else "`{}`")
    assert ("(ext)" in effect) == key.extension, f"{key.dotted}: (ext) marker and EXT metadata differ"
    assert ("(no effect)" in effect) == key.no_effect, f"{key.dotted}: (no effect) marker and COMPAT metadata differ"


def test_the_examples_are_the_conf_files() -> None:
    blocks = REFERENCE.read_text().split("## Examples", 1)[1].split("```yaml\n")[1:]
    examples = [block.split("```", 1)[0] for block in blocks]
    assert examples == [(ROOT / "conf" / name).read_text() for name in ("spooky-minimal.yaml", "spooky-production.yaml")]


def test_the_examples_are_the_contracts_when_it_is_at_hand() -> None:
    # beside the checkout in the team's layout (../shared, or ../../shared from a worktree)
    spec = next((p / "shared" / "spec" / "config.md" for p in ROOT.parents if (p / "shared" / "spec" / "config.md").exists()), None)
    if spec is None:
        pytest.skip("the schema contract is not beside this checkout")
    blocks = spec.read_text().split("```yaml\n")[1:3]
    assert [block.split("```", 1)[0] for block in blocks] == [
        (ROOT / "conf" / name).read_text() for name in ("spooky-minimal.yaml", "spooky-production.yaml")
    ]
