"""The plugin API's views (spooky_trio.plugin): every change a plugin makes is checked where
it makes it, the proxy's own fields stay the proxy's, nothing of the proxy is reachable, and
importing the API pulls in nothing of the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

import spooky_trio.plugin as api
from spooky_trio.plugin import Headers, IncompatibleApi, Request, Response, ResponseHead, require_api


def test_the_api_module_pulls_in_no_server() -> None:
    code = ("import sys, spooky_trio.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith('spooky_trio') or m in ('trio', 'aioquic', 'h2', 'h11')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(["spooky_trio", "spooky_trio.http", "spooky_trio.http.messages", "spooky_trio.plugin",
                                      "spooky_trio.plugin.headers", "spooky_trio.plugin.messages"])


def test_version_check() -> None:
    assert api.API_VERSION == (1, 0)
    require_api(1)
    require_api(1, 0)
    with pytest.raises(IncompatibleApi, match="needs the spooky-trio plugin API 1.5; this proxy offers 1.0"):
        require_api(1, 5)
    with pytest.raises(IncompatibleApi):
        require_api(2)


def test_headers_are_checked_and_framing_is_the_proxys() -> None:
    fields: list[tuple[bytes, bytes]] = [(b"host", b"a"), (b"x-a", b"1"), (b"x-a", b"2")]
    headers = Headers(fields)
    assert headers.get("X-A") == "1" and headers.get_all("x-a") == ["1", "2"] and "X-a" in headers and len(headers) == 3
    headers.set("X-B", "v")
    headers.add("x-a", "3")
    assert headers.remove("x-a") == 3
    assert fields == [(b"host", b"a"), (b"x-b", b"v")]  # the proxy's own list, changed in place
    for name in ("content-length", "Transfer-Encoding", "host", "connection", "te"):
        with pytest.raises(ValueError, match="managed by the proxy"):
            headers.set(name, "1")
    for bad_name in ("", "a b", "x:y", "é"):
        with pytest.raises(ValueError, match="not an HTTP field name"):
            headers.add(bad_name, "v")
    for bad_value in ("a\r\nx-injected: 1", "a\x00", " lead", "trail ", "é€", "x" * (16 * 1024 + 1)):
        with pytest.raises(ValueError):
            headers.add("x-c", bad_value)
    with pytest.raises(ValueError):
        headers.add("x-c", 7)  # type: ignore[arg-type]
    assert fields == [(b"host", b"a"), (b"x-b", b"v")]
    assert "v" not in repr(headers)  # values may be credentials
    for index in range(1022):
        headers.add("x-many", str(index))
    with pytest.raises(ValueError, match="at most 1024 header fields"):  # every buffer has a bound
        headers.add("x-many", "one too many")
    with pytest.raises(ValueError, match="at most 1024"):
        headers.set("x-other", "1")
    headers.set("x-many", "1")  # replacing shrinks it again
    assert len(headers) == 3


def test_request_view_changes_and_limits() -> None:
    request = Request.make("GET", "/a/b?x=1", headers={"authorization": "Bearer t"}, claims={"sub": "u"})
    assert (request.path, request.query, request.target) == ("/a/b", "x=1", "/a/b?x=1")
    request.path = "/c"
    assert request.target == "/c?x=1"
    request.query = ""
    assert request.target == "/c"
    for bad in ("c", "/a b", "/a?b", "/a#b", "/\x00"):
        with pytest.raises(ValueError):
            request.path = bad
    with pytest.raises(ValueError):
        request.query = "a b"
    with pytest.raises(TypeError):
        request.claims["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(AttributeError):
        request.pool = "other"  # type: ignore[misc]
    streaming = Request.make(body=None)
    with pytest.raises(RuntimeError, match="request_body_limit"):
        streaming.set_body(b"x")
    assert "x=1" not in repr(Request.make("GET", "/p?token=x"))
    # the view carries no reference to anything of the proxy
    assert not hasattr(request, "__dict__")
    assert {type(getattr(request, slot)).__module__.split(".")[0] for slot in Request.__slots__} <= {"builtins", "spooky_trio", "types"}


def test_response_rules() -> None:
    text = Response.text(403, "no", reason="denied")
    assert (text.status, text.body, text.reason) == (403, b"no\n", "denied")
    assert (b"content-type", b"text/plain; charset=utf-8") in text.headers
    assert Response.json(200, {"a": 1}).body == b'{"a":1}'
    assert (b"location", b"/x") in Response.redirect("/x", 308).headers
    with pytest.raises(AttributeError):
        text.status = 200  # type: ignore[misc]
    for status in (100, 199, 600, True, "200"):
        with pytest.raises(ValueError):
            Response(status)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Response(200, reason="Not A Reason")
    with pytest.raises(ValueError):
        Response(200, b"x" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="managed by the proxy"):
        Response(200, headers={"content-length": "5"})
    with pytest.raises(ValueError):
        Response.redirect("/x", 200)


def test_response_head_status_rules() -> None:
    head = ResponseHead.make(404, {"server": "x"})
    head.status = 410
    assert head.status == 410
    for bad in (204, 304, 99, 700):
        with pytest.raises(ValueError):
            head.status = bad
    no_body = ResponseHead.make(204)
    with pytest.raises(ValueError, match="cannot become"):
        no_body.status = 200
    with pytest.raises(ValueError, match="managed by the proxy"):
        head.headers.set("content-length", "1")
