"""Regression tests for what fuzzing found (inputs live under ``fuzz/regressions/``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import ConfigError, load_config_text

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # host_policy.host was only checked for blankness: a non-ASCII host made every request
        # of the pool fail in upstream_authority (str.encode("ascii")), and a CR/LF one would be
        # sent as the upstream Host / :authority
        ("host_policy_non_ascii.yaml", "upstream.a.host_policy.host"),
        ("host_policy_crlf.yaml", "upstream.a.host_policy.host"),
        # is_token used re.match with "$", which also matches before a trailing newline:
        # "GET\n" passed as a method
        ("trailing_newline_token.yaml", "upstream.a.route.method"),
    ],
)
def test_config_rejects(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text((REGRESSIONS / "fuzz_config" / name).read_text())
    assert message in str(info.value)


def test_key_spec_is_trimmed_like_spooky() -> None:
    # the same file's key "header:x-user\n" slipped through a "$" regex once; key specs are
    # now trimmed as a whole (Spooky trims them), so it means header x-user
    from spooky_trio.http.request_keys import KeySpec, parse_key_spec

    text = (REGRESSIONS / "fuzz_config" / "trailing_newline_token.yaml").read_text().replace('method: "GET\\n"', "method: GET")
    config = load_config_text(text)
    key = config.upstream["a"].load_balancing.key
    assert key == "header:x-user\n" and parse_key_spec(key) == KeySpec("header", "x-user")


def test_host_policy_rewrite_accepts_host_and_port() -> None:
    text = (
        "listen: {tls: {cert: c.pem, key: k.pem}}\nupstream:\n  a:\n    route: {path_prefix: /}\n"
        '    backends: [{id: b, address: "http://127.0.0.1:1"}]\n'
        "    host_policy: {mode: rewrite, host: %s}\n"
    )
    for host in ("web.internal", "web.internal:8443", "'[::1]:443'", "10.0.0.1"):
        config = load_config_text(text % host)
        assert config.upstream["a"].host_policy.host == host.strip("'")
    with pytest.raises(ConfigError):
        load_config_text(text % "'web.internal:99999'")


@pytest.mark.parametrize("name", ["null_key_crash", "non_string_keys.yaml"])
def test_non_string_yaml_keys_are_config_errors(name: str) -> None:
    # format_path assumed every mapping key was a str or a list index: a null or float key
    # (``null: 1``, ``1.5: x``) raised TypeError out of load_config_text
    text = (REGRESSIONS / "fuzz_config" / name).read_bytes().decode("utf-8", errors="replace")
    with pytest.raises(ConfigError):
        load_config_text(text)


def test_non_string_key_is_named_in_the_issue() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("null: 1\n1.5: x\n")
    assert '["None"]' in str(info.value) and '["1.5"]' in str(info.value)


def test_h1_connect_is_refused_before_h11_can_switch_protocols() -> None:
    """fuzz_h1_request: the harness answered a CONNECT with a 204, h11 switched to
    SWITCHED_PROTOCOL and refused the response's EndOfMessage (LocalProtocolError). The
    ingress now refuses CONNECT in ``_build``, before any answer goes through h11."""
    from collections import Counter

    from spooky_trio.ingress.bootstrap import BootstrapLimits, ServeContext
    from spooky_trio.ingress.h1 import H1ServerConnection, _Reject

    ctx = ServeContext(handler=None, activity=None, limits=BootstrapLimits(), stats=Counter())  # type: ignore[arg-type]
    for raw in (b"CONNECT /p HTTP/1.1\r\nHost: a\r\n\r\n", (REGRESSIONS / "fuzz_h1_request" / "connect_switched_protocol").read_bytes()):
        conn = H1ServerConnection(ctx, None, ("198.51.100.7", 40000), None)  # type: ignore[arg-type]
        conn.h11.receive_data(raw)
        event = conn.h11.next_event()
        assert event.method == b"CONNECT"  # type: ignore[union-attr]
        with pytest.raises(_Reject) as info:
            conn._build(event)  # type: ignore[arg-type]
        assert (info.value.status, info.value.reason) == (501, "connect_not_supported")


# --- HTTP/3: header blocks bounded before QPACK decodes them (fuzz_h3_frames seeds) ---


def _h3_harness():  # type: ignore[no-untyped-def]
    import sys

    fuzz_dir = str(REGRESSIONS.parent)
    if fuzz_dir not in sys.path:
        sys.path.insert(0, fuzz_dir)
    import fuzz_h3_frames

    return fuzz_h3_frames


def _h3_events(seed: str) -> tuple[list[object], object]:
    harness = _h3_harness()
    events: list[object] = []
    pairs: list[object] = []
    original = harness.Pair.pump

    def pump(self) -> None:  # type: ignore[no-untyped-def]
        original(self)
        if not pairs or pairs[-1] is not self:
            pairs.append(self)
        events.extend(self.events)

    harness.Pair.pump = pump
    try:
        harness.test_one_input((REGRESSIONS.parent / "corpus" / "fuzz_h3_frames" / seed).read_bytes())
    finally:
        harness.Pair.pump = original
    return events, pairs[-1]


@pytest.mark.parametrize(
    ("seed", "reason"),
    [
        # 2400 one-byte static-table references: refused undecoded (with a dynamic table, a
        # 100 KB frame of such references to a 4 KiB entry decoded to 400 MB in 2 s)
        ("qpack_static_bomb", "too many field lines"),
        # a HEADERS frame announcing 2^62 bytes was buffered for as long as the client sent
        ("huge_headers_frame", "HEADERS frame too large"),
    ],
)
def test_h3_header_blocks_are_bounded_per_stream(seed: str, reason: str) -> None:
    from aioquic.h3.connection import ErrorCode

    from spooky_trio.ingress.h3 import MalformedRequest

    events, pair = _h3_events(seed)
    malformed = [e for e in events if isinstance(e, MalformedRequest)]
    assert [(e.reason, e.excessive_load) for e in malformed] == [(reason, True)]
    assert pair.client_resets == {malformed[0].stream_id: ErrorCode.H3_EXCESSIVE_LOAD}  # type: ignore[attr-defined]
    assert not pair.close_codes  # type: ignore[attr-defined]  # the connection lives on


def test_h3_dynamic_table_inserts_close_only_that_connection() -> None:
    """The server advertises QPACK_MAX_TABLE_CAPACITY 0: the qpack_bomb seed's ~4 KB insert
    (whose 2400 references once decoded to ~10 MB) is a QPACK encoder-stream error, which
    closes the connection before any field section is decoded (RFC 9204 4.3.1)."""
    from aioquic.h3.connection import ErrorCode

    events, pair = _h3_events("qpack_bomb")
    assert pair.close_codes == [ErrorCode.QPACK_ENCODER_STREAM_ERROR]  # type: ignore[attr-defined]
    assert not [e for e in events if type(e).__name__ == "HeadersReceived"]


def test_count_field_lines_reads_lengths_only() -> None:
    import pylsqpack

    from spooky_trio.ingress.h3 import count_field_lines

    headers = [(b":method", b"GET"), (b":path", b"/"), (b"x-a", b"1" * 300), (b"cookie", b"a=b")]
    _, block = pylsqpack.Encoder().encode(0, headers)
    assert count_field_lines(block, 100) == 4
    assert count_field_lines(block, 2) == 3  # stops one past the limit
    assert count_field_lines(b"\x02\x00" + b"\x80" * 1000, 50) == 51
    assert count_field_lines(b"", 5) == 0 and count_field_lines(b"\x00", 5) == 0
    assert count_field_lines(b"\x00\x00\x2f", 5) == 1  # truncated literal name: counted, no error


def test_h3_oversized_control_stream_frame_is_a_connection_error() -> None:
    """aioquic buffered a SETTINGS frame announcing 2^40 bytes until complete: 10 MB after
    10 MB sent. Now H3_EXCESSIVE_LOAD closes the connection past MAX_UNI_STREAM_BUFFER."""
    from aioquic.buffer import encode_uint_var
    from aioquic.h3.connection import ErrorCode

    pair = _h3_harness().Pair()
    control = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(control, b"\x00" + encode_uint_var(0x4) + encode_uint_var(1 << 40))
    for _ in range(10):
        pair.client.send_stream_data(control, b"\x01" * 10_000)
        pair.pump()
    assert pair.close_codes == [ErrorCode.H3_EXCESSIVE_LOAD]
    assert pair.h3.control_stream_overflows == 1
    assert all(len(s.buffer) <= 16 * 1024 for s in pair.h3._stream.values())
