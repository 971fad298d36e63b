"""The aioquic pin and the import-time guard of the wrapper modules (spooky_trio/aioquic_compat.py).

The guard must name the supported range and the hook that moved when the installed aioquic
lacks a private method a wrapper overrides or calls, or changed its parameters; it must run
at import (a subprocess imports each wrapper with a hook deleted); and every private aioquic
method a wrapper class overrides must be marked, or the guard would not see it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import aioquic
import pytest
from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.recovery import QuicPacketRecovery
from packaging.requirements import Requirement

from spooky_trio import aioquic_compat
from spooky_trio.aioquic_compat import SUPPORTED_AIOQUIC, UnsupportedAioquic, check_overrides, require_method
from spooky_trio.upstream.quic_engine import FlowControlledQuicConnection, GoawayAwareH3Connection
from spooky_trio.ingress.h3 import StreamScopedH3Connection
from spooky_trio.ingress.quic_engine import SpookyQuicConnection, _SniContext

ROOT = Path(__file__).resolve().parents[2]
WRAPPER_CLASSES = [_SniContext, SpookyQuicConnection, StreamScopedH3Connection, FlowControlledQuicConnection, GoawayAwareH3Connection]


def test_pyproject_pins_the_supported_range_and_it_is_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "aioquic"]
    assert [str(p.specifier) for p in pins] == [str(Requirement("aioquic" + SUPPORTED_AIOQUIC).specifier)]
    assert pins[0].specifier.contains(importlib.metadata.version("aioquic"))


@pytest.mark.parametrize("cls", WRAPPER_CLASSES, ids=lambda c: c.__name__)
def test_every_overridden_private_aioquic_method_is_marked(cls: type) -> None:
    aioquic_bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("aioquic.")]
    for name, value in cls.__dict__.items():
        if name.startswith("_") and not name.startswith("__") and inspect.isfunction(value):
            if any(name in base.__dict__ for base in aioquic_bases):
                assert getattr(value, "__aioquic_override__", False), f"{cls.__name__}.{name} overrides aioquic: mark it @overrides"
    check_overrides(cls)  # the installed aioquic passes


def test_a_missing_hook_names_the_range_and_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(UnsupportedAioquic) as info:
        check_overrides(SpookyQuicConnection)
    message = str(info.value)
    assert f"aioquic{SUPPORTED_AIOQUIC}" in message and f"installed: {aioquic.__version__}" in message
    assert "SpookyQuicConnection._write_stream_limits" in message
    assert isinstance(info.value, ImportError)  # raised at import, it reads as an import failure


def test_a_changed_signature_shows_both(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioquic before 1.6 passed a 1-RTT buffer to _server_handle_hello
    def old_hello(self, input_buf, initial_buf, handshake_buf, onertt_buf):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    monkeypatch.setattr(tls.Context, "_server_handle_hello", old_hello)
    with pytest.raises(UnsupportedAioquic, match=r"Context\._server_handle_hello\(input_buf, initial_buf, handshake_buf, onertt_buf\) "
                                                  r"with \(input_buf, initial_buf, handshake_buf\)"):
        check_overrides(_SniContext)


def test_require_method(monkeypatch: pytest.MonkeyPatch) -> None:
    require_method(QuicPacketRecovery, "_on_packets_lost", ("congestion_event", "now", "packets", "persistent_congestion", "space"))

    def renamed(self, *, now, lost_packets, space):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    monkeypatch.setattr(QuicPacketRecovery, "_on_packets_lost", renamed)
    with pytest.raises(UnsupportedAioquic, match=r"_on_packets_lost takes \(now, lost_packets, space\), expected \(congestion_event"):
        require_method(QuicPacketRecovery, "_on_packets_lost", ("congestion_event", "now", "packets", "persistent_congestion", "space"))
    monkeypatch.delattr(QuicConnection, "_on_max_stream_data_delivery")
    with pytest.raises(UnsupportedAioquic, match="QuicConnection has no method _on_max_stream_data_delivery"):
        require_method(QuicConnection, "_on_max_stream_data_delivery", ("delivery", "stream"))


@pytest.mark.parametrize(
    ("owner", "hook", "module"),
    [
        ("aioquic.quic.connection:QuicConnection", "_write_ack_frame", "spooky_trio.ingress.quic_engine"),
        ("aioquic.h3.connection:H3Connection", "_receive_stream_data_uni", "spooky_trio.ingress.h3"),
        ("aioquic.h3.connection:H3Connection", "_check_control_frame_type", "spooky_trio.upstream.quic_engine"),
    ],
)
def test_the_guard_runs_at_import(owner: str, hook: str, module: str) -> None:
    owner_module, owner_class = owner.split(":")
    script = (
        f"import importlib, {owner_module} as m\n"
        f"delattr(m.{owner_class}, {hook!r})\n"
        f"importlib.import_module({module!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("spooky_trio.aioquic_compat.UnsupportedAioquic: spooky-trio needs aioquic" + SUPPORTED_AIOQUIC), last
    assert hook in last


def test_overrides_returns_the_function_itself() -> None:
    def hook(self):  # type: ignore[no-untyped-def]
        return 1

    assert aioquic_compat.overrides(hook) is hook  # no wrapper on the per-packet path
