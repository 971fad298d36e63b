"""docs/traffic-policy.md: every YAML example loads (fragments inside a pool of their own,
beside the pools they name), and every metric it names is one the proxy defines."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from spooky_trio.config import load_config_text
from spooky_trio.observability.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "traffic-policy.md"
LISTEN = "listen:\n  tls: {cert: /c.pem, key: /k.pem}\n"
#: the pools the fragments name (added when a fragment names one it does not define), and
#: the pool a fragment at pool or policy level goes in
OTHERS = {"api-v2": "  api-v2:\n    backends: [{id: v2, address: 'http://10.0.9.2:80'}]\n",
          "api-shadow": "  api-shadow:\n    backends: [{id: s, address: 'http://10.0.9.3:80'}]\n"}
POOL = "  api:\n    route: {host: api.example.com, path_prefix: /v1}\n    backends: [{id: a, address: 'http://10.0.9.1:80'}]\n"


def examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def as_config(block: str) -> str:
    """A whole config around ``block`` (module docstring)."""
    if block.startswith("upstream:"):
        return LISTEN + block
    indent = len(block) - len(block.lstrip(" "))
    if indent == 2:  # pools
        pools = block
    elif indent == 4:  # a pool's keys
        pools = POOL + textwrap.indent(textwrap.dedent(block), "    ")
    else:  # traffic_policy keys
        pools = POOL + "    traffic_policy:\n" + textwrap.indent(textwrap.dedent(block), "      ")
    defined = set(re.findall(r"^  ([\w-]+):", pools, re.M))
    named = set(re.findall(r"pool: ([\w-]+)", pools))
    return LISTEN + "upstream:\n" + pools + "".join(OTHERS[name] for name in sorted(named - defined))


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.splitlines()[0].strip()[:40])
def test_every_example_loads(block: str) -> None:
    load_config_text(as_config(block))


def test_the_metrics_it_names_exist() -> None:
    names = set(re.findall(r"`(spooky_[a-z_]+)(?:\{|`)", DOC.read_text()))
    assert names
    exposed = {family.name for family in Metrics().registry.collect()} | {
        sample.name for family in Metrics().registry.collect() for sample in family.samples}
    missing = {name for name in names if name not in exposed and name.removesuffix("_total") not in exposed}
    assert not missing, missing
