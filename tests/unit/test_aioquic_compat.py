"""The aioquic pin and the import-time guard of the wrapper modules (spooky_trio/aioquic_compat.py).

The guard must name the supported range and the hook that moved when the installed aioquic
lacks a private method a wrapper overrides or calls, or changed its parameters; it must run
at import (a subprocess imports each wrapper with a hook deleted); and every private aioquic
method a wrapper class overrides must be marked, or the guard would not see it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import random
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import aioquic
import pytest
from aioquic import tls
from aioquic.h3.connection import MessageError
from aioquic.quic.connection import QuicConnection
from aioquic.quic.recovery import QuicPacketRecovery
from packaging.requirements import Requirement

from spooky_trio import aioquic_compat
from spooky_trio.aioquic_compat import (
    SUPPORTED_AIOQUIC,
    UnsupportedAioquic,
    check_overrides,
    require_method,
)
from spooky_trio.ingress.h3 import StreamScopedH3Connection
from spooky_trio.ingress.quic_engine import SpookyQuicConnection, _SniContext
from spooky_trio.upstream.quic_engine import (
    FlowControlledQuicConnection,
    GoawayAwareH3Connection,
)

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


def _answer(check: Callable[..., None], *args: bytes) -> str | None:
    """None when ``check`` accepts, else the message of aioquic's MessageError."""
    try:
        check(*args)
    except MessageError as exc:
        return str(exc)
    return None


def _samples() -> list[bytes]:
    """Every string of up to three bytes over the bytes that matter, plus random ones."""
    alphabet = [b"\x00", b"\t", b"\n", b"\r", b" ", b"!", b":", b";", b"@", b"A", b"Z", b"[", b"a", b"~", b"\x7f", b"\x80", b"\xff"]
    samples = [b""] + alphabet
    samples += [a + b for a in alphabet for b in alphabet]
    samples += [a + b + c for a in alphabet for b in alphabet for c in alphabet]
    rng = random.Random(22)
    samples += [bytes(rng.choice(b"\x00\t\n\r :aA~\x7f\x80\xff!-") for _ in range(rng.randrange(4, 40))) for _ in range(3000)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) for _ in range(3000)]
    return samples


def test_the_fast_header_checks_answer_exactly_as_aioquics() -> None:
    for sample in _samples():
        assert _answer(aioquic_compat.fast_validate_header_name, sample) == \
            _answer(aioquic_compat.AIOQUIC_VALIDATE_HEADER_NAME, sample), sample
        assert _answer(aioquic_compat.fast_validate_header_value, b"x-k", sample) == \
            _answer(aioquic_compat.AIOQUIC_VALIDATE_HEADER_VALUE, b"x-k", sample), sample
    # the originals are aioquic's byte loops, not ours
    assert aioquic_compat.AIOQUIC_VALIDATE_HEADER_NAME.__module__ == "aioquic.h3.connection"
    assert aioquic_compat.AIOQUIC_VALIDATE_HEADER_VALUE.__module__ == "aioquic.h3.connection"


def test_the_http3_wrappers_install_the_fast_header_checks() -> None:
    import aioquic.h3.connection as h3

    # importing ingress/h3.py and upstream/quic_engine.py (above) installed them
    assert h3.validate_header_name is aioquic_compat.fast_validate_header_name
    assert h3.validate_header_value is aioquic_compat.fast_validate_header_value
    with pytest.raises(MessageError, match="forbidden"):
        h3.validate_headers([(b":method", b"GET"), (b"x", b"a\x00b")], allowed_pseudo_headers=frozenset({b":method"}),
                            required_pseudo_headers=frozenset())


def test_installing_the_fast_checks_fails_loudly_when_aioquic_moved_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioquic.h3.connection as h3

    monkeypatch.delattr(h3, "validate_header_value")
    with pytest.raises(UnsupportedAioquic, match="validate_header_value"):
        aioquic_compat.install_fast_header_checks()
    monkeypatch.setattr(h3, "validate_header_value", lambda name, data: None, raising=False)
    with pytest.raises(UnsupportedAioquic, match=r"no longer takes \(key, value\)"):
        aioquic_compat.install_fast_header_checks()
