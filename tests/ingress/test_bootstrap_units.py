"""Unit tests for the bootstrap listener's pure parts: TLS helpers, header policy, tunnels."""

from __future__ import annotations

import ssl
from collections import Counter

import pytest
import trio

from spooky_trio.ingress.bootstrap import BootstrapLimits, ServeContext
from spooky_trio.ingress.h1_stream import raw_response
from spooky_trio.ingress.h2_stream import header_block
from spooky_trio.ingress.tls import (
    CLIENT_CERT_HEADER,
    classify_handshake_failure,
    client_headers,
    escape_subject,
)
from spooky_trio.proxy.tunnel import websocket_accept


def verify_error(code: int) -> BaseException:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = code
    wrapper = trio.BrokenResourceError()
    wrapper.__cause__ = err
    return wrapper


@pytest.mark.parametrize(
    ("code", "reason"),
    [(10, "expired"), (9, "not_yet_valid"), (20, "unknown_issuer"), (19, "unknown_issuer"), (18, "unknown_issuer"), (7, "invalid")],
)
def test_verify_codes_map_to_reasons(code: int, reason: str) -> None:
    assert classify_handshake_failure(verify_error(code)) == reason


def test_missing_certificate_and_other_failures() -> None:
    missing = ssl.SSLError(1, "peer did not return a certificate")
    missing.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"  # type: ignore[misc]
    wrapper = trio.BrokenResourceError()
    wrapper.__cause__ = missing
    assert classify_handshake_failure(wrapper) == "missing"
    assert classify_handshake_failure(trio.BrokenResourceError()) == "handshake_failed"


def test_subject_escaping_and_header_stripping() -> None:
    assert escape_subject("CN=alice,O=Example") == b"CN=alice,O=Example"
    assert escape_subject("CN=J\u00fcrgen") == b"CN=J\\C3\\BCrgen"
    assert escape_subject("CN=a\nb") == b"CN=a\\0Ab"
    headers = [(b"a", b"1"), (CLIENT_CERT_HEADER, b"CN=forged"), (CLIENT_CERT_HEADER, b"CN=again")]
    assert client_headers(headers, None) == [(b"a", b"1")]
    assert client_headers(headers, b"CN=real") == [(b"a", b"1"), (CLIENT_CERT_HEADER, b"CN=real")]


def test_header_limits_and_alt_svc() -> None:
    ctx = ServeContext(handler=None, activity=None, limits=BootstrapLimits(max_headers_count=3, max_headers_bytes=20), stats=Counter())  # type: ignore[arg-type]
    assert ctx.head_limit_error([(b"a", b"1")] * 3) is None
    error = ctx.head_limit_error([(b"a", b"1")] * 4)
    assert error is not None and error.status == 431 and error.reason == "too_many_headers"
    error = ctx.head_limit_error([(b"name", b"x" * 17)])
    assert error is not None and error.reason == "headers_too_large"
    ctx.alt_svc = b'h3=":443"; ma=86400'
    assert ctx.response_headers([(b"alt-svc", b'h3=":8443"'), (b"x", b"y")]) == [(b"x", b"y"), (b"alt-svc", b'h3=":443"; ma=86400')]


def test_raw_response_is_complete_and_closing() -> None:
    data = raw_response(431, [(b"alt-svc", b"x")], b"too big")
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\ncontent-length: 7\r\nconnection: close\r\n\r\ntoo big" in data


def test_websocket_accept_matches_rfc6455_example() -> None:
    assert websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_http2_header_blocks_are_normalized_in_one_pass() -> None:
    """h2's outbound normalization and validation are off for responses: header_block does
    what they did (lowercase, strip, drop what HTTP/2 forbids, never index credentials)."""
    from hpack import NeverIndexedHeaderTuple

    fields = [
        (b"Content-Type", b" text/plain "),
        (b"connection", b"close"),
        (b"Keep-Alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b":status", b"500"),
        (b"authorization", b"Basic abc"),
        (b"cookie", b"a=1"),
        (b"cookie", b"long-enough-cookie=1234567890"),
        (b"set-cookie", b"s=1"),
    ]
    block = header_block([(b":status", b"200")], fields)
    assert block == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"authorization", b"Basic abc"),
        (b"cookie", b"a=1"),
        (b"cookie", b"long-enough-cookie=1234567890"),
        (b"set-cookie", b"s=1"),
    ]
    assert [type(h) is NeverIndexedHeaderTuple for h in block] == [False, False, True, True, False, False]
    assert header_block([], [(b"Grpc-Status", b"0 "), (b":path", b"/")]) == [(b"grpc-status", b"0")]
