"""Regenerate the committed seed corpora: ``python fuzz/make_seeds.py``.

Seeds are a handful of valid and near-valid inputs per harness; the structured harnesses'
seeds are written with :class:`_fdp.Writer` so they decode to the intended structure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _fdp import Writer  # noqa: E402

ROOT = HERE.parent


def _headers(pairs: list[tuple[bytes, bytes]], max_count: int = 24) -> Writer:
    w = Writer().int_in_range(len(pairs), 0, max_count)
    for name, value in pairs:
        w.boolean(False).bytes_(name).boolean(False).bytes_(value)
    return w


def config_seeds() -> dict[str, bytes]:
    seeds = {p.stem: p.read_bytes() for p in sorted((ROOT / "conf").glob("*.yaml"))}
    seeds["near_dup_key"] = b"upstream:\n  a:\n    route: {path_prefix: /}\n    route: {host: x}\n"
    seeds["near_bad_lb_key"] = (
        b"listen: {tls: {cert: c.pem, key: k.pem}}\nupstream:\n  a:\n    route: {host: '*.Example.com', method: get}\n"
        b"    load_balancing: {type: consistent-hash, key: 'header:X-User'}\n"
        b"    host_policy: {mode: rewrite, host: 'h\xc3\xa9.example'}\n"
        b"    backends: [{id: b, address: 'http://127.0.0.1:1'}]\n"
    )
    seeds["near_not_mapping"] = b"- 1\n- 2\n"
    seeds["near_tabs"] = b"upstream:\n\ta: 1\n"
    return seeds


def h3_seeds() -> dict[str, bytes]:
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/"), (b"user-agent", b"x")]
    return {
        "get": _headers(get).getvalue(),
        "post_cl": _headers([*get[:4], (b"content-length", b"5"), (b"host", b"example.com")]).getvalue(),
        "connect": _headers([(b":method", b"CONNECT"), (b":authority", b"example.com:443")]).getvalue(),
        "extended_connect": _headers([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *get[1:4]]).getvalue(),
        "near_no_path": _headers(get[:3]).getvalue(),
        "near_uppercase": _headers([*get[:4], (b"X-Upper", b"1")]).getvalue(),
        "near_te": _headers([*get[:4], (b"te", b"gzip"), (b"connection", b"close")]).getvalue(),
        "near_pseudo_after": _headers([get[0], (b"a", b"b"), *get[1:4]]).getvalue(),
    }


def h1_seeds() -> dict[str, bytes]:
    return {
        "get": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "pipelined": b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nHEAD /b HTTP/1.1\r\nHost: a\r\n\r\n",
        "post_cl": b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "chunked": b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "absolute_form": b"GET http://example.com:8080/x?y HTTP/1.1\r\nHost: other\r\nX-Client-Cert-Subject: CN=forged\r\n\r\n",
        "http10": b"GET / HTTP/1.0\r\n\r\n",
        "upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "near_cl_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "near_obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "near_bad_chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "near_two_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    }


def _h2_headers_frame(w: Writer, sid_index: int, pairs: list[tuple[bytes, bytes]], end_stream: bool) -> None:
    w.int_in_range(0, 0, 10).byte(sid_index).int_in_range(len(pairs), 0, 12)
    for name, value in pairs:
        w.boolean(False).bytes_(name).boolean(False).bytes_(value)
    w.byte(1).boolean(end_stream)  # END_HEADERS, END_STREAM


def h2_seeds() -> dict[str, bytes]:
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/")]
    seeds = {}
    w = Writer().int_in_range(1, 1, 12)
    _h2_headers_frame(w, 1, get, True)
    seeds["get"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(2, 1, 12)
    _h2_headers_frame(w, 1, [*get[:3], (b":path", b"/up"), (b"content-length", b"5")], False)
    w.int_in_range(4, 0, 10).byte(1).bytes_(b"hello").boolean(True)  # DATA on stream 1, END_STREAM
    seeds["post"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(1, 1, 12)
    _h2_headers_frame(w, 1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *get[1:]], False)
    seeds["extended_connect"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(2, 1, 12)
    _h2_headers_frame(w, 1, get, False)
    w.int_in_range(5, 0, 10).byte(1).byte(8)  # RST_STREAM CANCEL
    seeds["reset"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(1, 1, 12)
    _h2_headers_frame(w, 1, [*get, (b"host", b"other.example"), (b"te", b"trailers")], True)
    seeds["host_and_authority"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(1, 1, 12)
    _h2_headers_frame(w, 1, [*get, (b"connection", b"close")], True)
    seeds["near_connection_header"] = w.boolean(False).getvalue()
    w = Writer().int_in_range(1, 1, 12)
    _h2_headers_frame(w, 1, [*get, (b"content-length", b"x5")], True)
    seeds["near_bad_content_length"] = w.boolean(False).getvalue()
    return seeds


def routing_seeds() -> dict[str, bytes]:
    def route(host: int, prefix: int, method: int, pool: int) -> Writer:
        return Writer().byte(1).byte(host).byte(1).byte(prefix).byte(1).byte(method).byte(pool)

    def request(host: int, path: int, method: int) -> bytes:
        return Writer().byte(1).byte(host).byte(1).byte(path).byte(1).byte(method).getvalue()

    seeds = {}
    body = b"".join(route(*r).getvalue() for r in [(1, 1, 0, 0), (2, 2, 0, 1), (0, 4, 1, 2), (3, 0, 3, 3)])
    seeds["four_routes"] = Writer().byte(4).raw(body).raw(request(3, 2, 0)).getvalue()
    body = b"".join(route(*r).getvalue() for r in [(4, 0, 0, 0), (5, 0, 0, 1), (2, 3, 2, 2)])
    seeds["case_and_port"] = Writer().byte(3).raw(body).raw(request(2, 2, 1)).getvalue()
    seeds["empty_table"] = Writer().byte(0).raw(request(0, 0, 0)).getvalue()

    def matcher(source: int, name: int, kind: int, invert: bool, value: int) -> bytes:
        w = Writer().byte(source).byte(name).byte(kind).boolean(invert)
        return (w.boolean(bool(value)) if kind == 4 else w.byte(1).byte(value)).getvalue()

    def fields(headers: list[tuple[int, int]], queries: list[int]) -> bytes:
        w = Writer().byte(len(headers))
        for name, value in headers:
            w.byte(name).byte(1).byte(value)
        w.byte(len(queries))
        for query in queries:
            w.byte(query)
        return w.getvalue()

    # two routes on "/", one with a header matcher (x-a exact "1") the request satisfies
    body = b"".join(route(*r).getvalue() for r in [(0, 1, 0, 0), (0, 1, 0, 1)])
    tail = Writer().byte(1).raw(matcher(0, 0, 0, False, 0)).byte(0).getvalue() + fields([(0, 0)], [])
    seeds["header_matcher"] = Writer().byte(2).raw(body).raw(request(0, 0, 0)).raw(tail).getvalue()
    # query present + inverted cookie prefix against a cookie field and a repeated query key
    tail = (Writer().byte(2).raw(matcher(1, 3, 4, False, 1)).raw(matcher(2, 3, 1, True, 3)).byte(1)
            .raw(matcher(0, 1, 3, False, 1)).getvalue() + fields([(2, 4), (0, 1)], [0, 1, 2]))
    seeds["query_cookie_matchers"] = Writer().byte(2).raw(body).raw(request(0, 0, 0)).raw(tail).getvalue()
    return seeds


def key_seeds() -> dict[str, bytes]:
    def req(spec: int, headers: list[tuple[int, int]], path: int) -> bytes:
        w = Writer().byte(1).byte(spec).byte(len(headers))
        for name, value in headers:
            w.boolean(True).byte(name).boolean(True).byte(value)
        return w.boolean(True).byte(0).boolean(True).byte(0).boolean(True).byte(path).boolean(True).byte(3).getvalue()

    return {
        "header": req(5, [(0, 0), (0, 5)], 0),
        "cookie": req(7, [(1, 1), (1, 2)], 0),
        "query": req(8, [], 2),
        "default": req(0, [], 1),
        "cid": req(4, [], 0),
        "near_invalid": req(12, [], 0),
    }


def forwarded_seeds() -> dict[str, bytes]:
    def build(headers: list[tuple[int, int]], mode: int, ip: int, authority: bytes, host_mode: int) -> bytes:
        w = Writer().byte(len(headers))
        for name, value in headers:
            w.boolean(True).byte(name).boolean(True).byte(value)
        w.byte(mode).byte(ip).byte(0).boolean(False).bytes_(authority)
        return w.byte(1).byte(2).byte(host_mode).getvalue()

    return {
        "append": build([(6, 6), (9, 9), (0, 1)], 1, 0, b"example.com:443", 0),
        "preserve": build([(6, 7), (2, 3)], 2, 1, b"[::1]:8443", 1),
        "overwrite_connection": build([(0, 2), (9, 9), (2, 3), (4, 8)], 0, 2, b"Example.COM", 2),
        "near_xff_in_connection": build([(0, 10), (6, 6)], 1, 3, b"", 0),
    }


def _h3_headers_action(w: Writer, sid_index: int, pairs: list[tuple[bytes, bytes]], end: bool, encoder_first: bool = True) -> None:
    w.int_in_range(0, 0, 9).byte(sid_index).int_in_range(len(pairs), 0, 20)
    for name, value in pairs:
        w.boolean(False).bytes_(name).boolean(False).bytes_(value)
    w.int_in_range(1 if encoder_first else 0, 0, 3).boolean(end)


def _h3_start(actions: int, capacity_index: int = 2) -> Writer:
    # table capacity (0/256/4096), a control stream with SETTINGS, number of actions
    return Writer().byte(capacity_index).int_in_range(1, 0, 7).int_in_range(actions, 1, 16)


def h3_frames_seeds() -> dict[str, bytes]:
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/")]
    post = [(b":method", b"POST"), *get[1:], (b"content-length", b"5")]
    seeds = {}
    w = _h3_start(1)
    _h3_headers_action(w, 0, get, True)
    seeds["get"] = w.getvalue()
    w = _h3_start(2)
    _h3_headers_action(w, 0, post, False)
    w.int_in_range(4, 0, 9).byte(0).bytes_(b"hello").boolean(True)  # DATA, FIN
    seeds["post_data"] = w.getvalue()
    big = [*get, (b"x-big", b"v" * 60), (b"cookie", b"a=1")]
    w = _h3_start(2)
    _h3_headers_action(w, 0, big, True, encoder_first=False)  # encoder data after the frame: blocked
    _h3_headers_action(w, 1, big, True)  # the same fields again: dynamic-table references
    seeds["dynamic_table_blocked"] = w.getvalue()
    # one ~4000-byte insert, then a field section of 2400 one-byte references to it: the
    # server allows no dynamic table, so the insert closes the connection (QPACK encoder error)
    w = _h3_start(2).int_in_range(6, 0, 9).byte(0).int_in_range(1, 1, 4)
    w.int_in_range(0, 0, 3).bytes_(b"x-big").bytes_(b"v" * 40).int_in_range(100, 1, 100)
    w.int_in_range(3, 0, 9).byte(0).byte(2).byte(0).bytes_(b"\x80" * 60).int_in_range(40, 1, 40).boolean(True)
    seeds["qpack_bomb"] = w.getvalue()
    # 2400 one-byte static-table references (~25 bytes each decoded): refused undecoded
    w = _h3_start(1, capacity_index=0)
    w.int_in_range(3, 0, 9).byte(0).byte(0).byte(0).bytes_(b"\xd1" * 60).int_in_range(40, 1, 40).boolean(True)
    seeds["qpack_static_bomb"] = w.getvalue()
    w = _h3_start(1).int_in_range(3, 0, 9).byte(1).byte(0).byte(0).bytes_(b"\x80\x81").int_in_range(1, 1, 40).boolean(True)
    seeds["reference_beyond_table"] = w.getvalue()
    w = _h3_start(2, capacity_index=0).int_in_range(8, 0, 9).byte(0).byte(2).bytes_(b"\x00" * 100).int_in_range(30, 1, 30)
    _h3_headers_action(w, 1, get, True)
    seeds["huge_headers_frame"] = w.getvalue()
    w = _h3_start(3).int_in_range(5, 0, 9).byte(0).byte(0).bytes_(b"grease").boolean(False)
    _h3_headers_action(w, 0, get, False)
    w.int_in_range(5, 0, 9).byte(0).byte(3).bytes_(b"").boolean(True)  # SETTINGS on a request stream
    seeds["unknown_and_forbidden_frames"] = w.getvalue()
    w = _h3_start(2)
    _h3_headers_action(w, 2, post, False)
    w.int_in_range(9, 0, 9).byte(2).byte(0x10)  # client resets the stream
    seeds["reset"] = w.getvalue()
    w = _h3_start(1, capacity_index=0)
    _h3_headers_action(w, 3, [*get, (b"X-Upper", b"1")], True)
    seeds["near_uppercase"] = w.getvalue()
    # MAX_PUSH_ID announcing 2^40 bytes, then 25 KB of it on the control stream
    w = _h3_start(2).int_in_range(10, 0, 10).byte(0).byte(2).byte(2).bytes_(b"\x01" * 250).int_in_range(100, 1, 100)
    _h3_headers_action(w, 0, get, True)
    seeds["control_stream_huge_frame"] = w.getvalue()
    return seeds


def auth_token_seeds() -> dict[str, bytes]:
    def built(mode: int, header: int, payload: int) -> bytes:
        return Writer().int_in_range(mode, 0, 2).boolean(True).byte(header).boolean(True).byte(payload).getvalue()

    raw = Writer().int_in_range(0, 0, 2).getvalue()
    return {
        "raw_bearer": raw + b"Bearer abc.def.ghi",
        "raw_key": raw + b"  key-two ",
        "raw_basic": raw + b"Basic dXNlcjpwdw==",
        "hs256_valid": built(1, 0, 0),
        "hs256_aud_list_nbf": built(1, 0, 1),
        "hs256_string_exp": built(1, 0, 2),
        "hs256_expired": built(1, 0, 3),
        "hs256_claims_to_headers": built(1, 0, 4),
        "near_none": built(1, 2, 0),
        "near_crit": built(1, 3, 0),
        "es256_bad_signature": built(2, 1, 0),
        "near_rs256_confusion": built(1, 5, 0),
    }


def control_api_seeds() -> dict[str, bytes]:
    # setup bytes: endpoint (0 = metrics, else control API), token, reload fails, ready; then read size
    control, metrics = bytes([1, 1, 0, 1]), bytes([0, 0, 0, 1])
    auth = b"Authorization: Bearer s3cret-token\r\n"
    return {
        "health_ready": control + b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nHEAD /ready HTTP/1.1\r\nHost: a\r\n\r\n",
        "runtime_authorized": control + b"GET /admin/runtime?x=1 HTTP/1.1\r\nHost: a\r\n" + auth + b"\r\n",
        "runtime_no_token": control + b"GET /admin/runtime HTTP/1.1\r\nHost: a\r\n\r\n",
        "runtime_wrong_token": control + b"GET /admin/runtime HTTP/1.1\r\nHost: a\r\nAuthorization: bearer nope\r\n\r\n",
        "reload_certs_fails": bytes([1, 1, 1, 1]) + b"POST /admin/runtime/reload-certs HTTP/1.1\r\nHost: a\r\n" + auth
        + b"Content-Length: 4\r\n\r\nbody",
        "restart_then_more": control + b"POST /admin/runtime/restart HTTP/1.1\r\nHost: a\r\n" + auth + b"\r\n"
        + b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
        "reload_501_chunked": control + b"PUT /admin/runtime/reload HTTP/1.1\r\nHost: a\r\n" + auth
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "no_token_configured": bytes([1, 0, 0, 0]) + b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\nDELETE /ready HTTP/1.1\r\nHost: a\r\n\r\n",
        "metrics": metrics + b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nPOST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "near_http10_close": bytes([1, 1, 0, 1, 7]) + b"GET /health HTTP/1.0\r\n\r\n",
        "near_bad_request_line": control + b"GET /health\r\n\r\n",
        "near_huge_header": control + b"GET /health HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 17000 + b"\r\n\r\n",
    }


def request_head_seeds() -> dict[str, bytes]:
    import fuzz_request_head as harness  # its option lists; importing it outside libFuzzer is inert

    def head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, scheme: bytes | None = b"https",
             authority: bytes | None = b"localhost", multiplexed: bool = True, merge: bool = True,
             action: str = "keep", reverse: bool = False) -> bytes:
        w = Writer().boolean(False).bytes_(method).boolean(False).bytes_(target).int_in_range(len(headers), 0, 12)
        for name, value in headers:
            w.boolean(False).bytes_(name).boolean(False).bytes_(value)
        w.pick(harness.SCHEMES, scheme).pick(harness.AUTHORITIES, authority).boolean(multiplexed)
        return w.boolean(merge).pick(harness.ESCAPED_SLASH_ACTIONS, action).boolean(reverse).getvalue()

    ua = (b"user-agent", b"x")
    return {
        "get": head(b"GET", b"/", [ua]),
        "h1_get": head(b"GET", b"/a?b=c", [(b"Host", b"example.com"), ua], scheme=None, authority=None, multiplexed=False),
        "post_cl": head(b"POST", b"/p", [(b"content-length", b"5"), (b"content-length", b"5")]),
        "cookies": head(b"GET", b"/", [(b"cookie", b"a=1"), (b"cookie", b"b=2")]),
        "connect": head(b"CONNECT", b"", [], scheme=None, authority=b"example.com:8443"),
        "dot_segments": head(b"GET", b"/a/./b/../../c", [ua], action="reject"),
        "escapes": head(b"GET", b"/%61%2e%2E/%2f%5C/%7e", [ua], action="unescape"),
        "merge": head(b"GET", b"//admin///x", [ua], merge=True),
        "near_uppercase": head(b"GET", b"/", [(b"X-Upper", b"1")]),
        "near_te": head(b"GET", b"/", [(b"te", b"gzip"), (b"connection", b"close")]),
        "near_cl_mismatch": head(b"POST", b"/", [(b"content-length", b"1"), (b"content-length", b"2")]),
        "near_ctl_value": head(b"GET", b"/", [(b"x-a", b"a\x0bb")]),
        "near_bad_escape": head(b"GET", b"/%zz/%", [ua]),
        "near_scheme": head(b"GET", b"/", [ua], scheme=b"http"),
        "near_pseudo_after": head(b"GET", b"/", [ua, (b":path", b"/x")], reverse=True),
    }


ALL = {
    "fuzz_config": config_seeds,
    "fuzz_h3_headers": h3_seeds,
    "fuzz_h1_request": h1_seeds,
    "fuzz_h2_frames": h2_seeds,
    "fuzz_h3_frames": h3_frames_seeds,
    "fuzz_routing": routing_seeds,
    "fuzz_balancer_keys": key_seeds,
    "fuzz_forwarded_headers": forwarded_seeds,
    "fuzz_control_api": control_api_seeds,
    "fuzz_request_head": request_head_seeds,
    "fuzz_auth_tokens": auth_token_seeds,
}


def main() -> None:
    for harness, make in ALL.items():
        out = HERE / "corpus" / harness
        out.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (out / f"{name}").write_bytes(data)
        print(harness, len(os.listdir(out)))


if __name__ == "__main__":
    main()
