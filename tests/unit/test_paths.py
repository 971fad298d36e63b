"""Path normalization (http/paths.py): what every policy check, route and filter sees."""

from __future__ import annotations

import pytest

from spooky_trio.http.paths import PathError, normalize_path, remove_dot_segments


@pytest.mark.parametrize(("path", "expected"), [
    # issue 24, finding 3: every bypass of denied_path_prefixes ["/admin"] becomes /admin/...
    (b"//admin/x", b"/admin/x"),
    (b"/./admin/x", b"/admin/x"),
    (b"/x/../admin/x", b"/admin/x"),
    (b"/%61dmin/x", b"/admin/x"),
    (b"/%2e%2E/admin/x", b"/admin/x"),
    (b"/ok/..//admin", b"/admin"),
    # RFC 3986: unreserved escapes decoded, the others upper-cased, case otherwise kept
    (b"/%7e%7Euser/%41%2d%5f", b"/~~user/A-_"),
    (b"/a%2fb%3a", b"/a%2Fb%3A"),
    (b"/A/B", b"/A/B"),
    # .. never climbs above /; a trailing . or .. keeps the directory form
    (b"/../../x", b"/x"),
    (b"/a/b/..", b"/a/"),
    (b"/a/.", b"/a/"),
    (b"/..", b"/"),
    # a backslash is an ordinary character; dots inside a segment are kept
    (b"/a\\..\\b", b"/a\\..\\b"),
    (b"/a/..b/.c/...", b"/a/..b/.c/..."),
])
def test_normalized(path: bytes, expected: bytes) -> None:
    assert normalize_path(path) == expected


def test_the_common_path_is_returned_untouched() -> None:
    path = b"/api/v1/users/42"
    assert normalize_path(path) is path


def test_merge_slashes_off_keeps_empty_segments() -> None:
    assert normalize_path(b"//a//b/./c", merge_slashes=False) == b"//a//b/c"


@pytest.mark.parametrize(("action", "expected"), [
    ("keep", b"/a%2Fb/%5C/c"),
    ("unescape", b"/a/b/\\/c"),
])
def test_escaped_slashes(action: str, expected: bytes) -> None:
    assert normalize_path(b"/a%2fb/%5c/c", escaped_slashes=action) == expected


def test_unescaped_slashes_take_part_in_dot_segments_and_merging() -> None:
    assert normalize_path(b"/a%2F..%2F%2Fadmin", escaped_slashes="unescape") == b"/admin"
    assert normalize_path(b"/a%2F..%2F%2Fadmin", escaped_slashes="keep") == b"/a%2F..%2F%2Fadmin"


@pytest.mark.parametrize(("path", "action", "reason"), [
    (b"/a%2Fb", "reject", "escaped_slash"),
    (b"/a%5cb", "reject", "escaped_slash"),
    (b"/%", "keep", "bad_path_escape"),
    (b"/%4", "keep", "bad_path_escape"),
    (b"/%zz", "keep", "bad_path_escape"),
    (b"/%\n0", "keep", "bad_path_escape"),
])
def test_refused(path: bytes, action: str, reason: str) -> None:
    with pytest.raises(PathError) as info:
        normalize_path(path, escaped_slashes=action)
    assert info.value.reason == reason


def test_remove_dot_segments_follows_rfc_3986_examples() -> None:
    # RFC 3986 5.2.4's own examples, as absolute paths
    assert remove_dot_segments(b"/a/b/c/./../../g") == b"/a/g"
    assert remove_dot_segments(b"/mid/content=5/../6") == b"/mid/6"
