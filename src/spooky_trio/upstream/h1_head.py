"""The HTTP/1.1 request head as an ``h11.Request``, its fields checked in two passes, not per field.

h11 checks every field it is handed: ``bytesify`` of the name and the value and one
regular expression each, about 6 Python calls per field, ~45 of a tiny request's ~1350
(docs/performance.md "Round two"). :func:`request_head` runs h11's own two field rules
(``h11._abnf``: a name is a token; a value is empty or field-content, i.e. no NUL, no
whitespace but SP and HTAB, and those only between other octets) once over all names
joined by SP and once over all values joined by NUL, neither of which either rule allows
inside a field, and counts the separators so a field holding one cannot pass as two.

When both hold, the event is built with ``_parsed=True``, h11's path for fields its own
parser produced: it skips exactly those per-field checks, and still lowercases the names,
checks Content-Length and Transfer-Encoding, counts Host, and checks the method and the
target. When either fails (or a part is not ``bytes``), the event is built the ordinary
way, so h11 itself decides and refuses with its own ``LocalProtocolError`` and message:
no head is accepted or refused differently than before. The rules are pinned to h11's by
``tests/upstream/test_h1_head.py`` (h11 is pinned in pyproject).
"""

from __future__ import annotations

import re

import h11

from spooky_trio.http.messages import Headers

#: h11._abnf.token / field_name
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
#: h11._abnf.field_content (``\s`` in a bytes pattern: SP, HTAB, LF, VT, FF, CR)
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
_NAMES = re.compile(_TOKEN + rb"(?: " + _TOKEN + rb")*")
_VALUES = re.compile(rb"(?:" + _FIELD_CONTENT + rb")?(?:\x00(?:" + _FIELD_CONTENT + rb")?)*")


def fields_valid(headers: Headers) -> bool:
    """True when h11 would accept every name and value of ``headers`` (bytes only)."""
    try:
        names = b" ".join([name for name, _ in headers])
        values = b"\x00".join([value for _, value in headers])
    except TypeError:  # a str among them: h11's bytesify path decides
        return False
    separators = len(headers) - 1
    return (
        separators >= 0
        and names.count(b" ") == separators
        and values.count(b"\x00") == separators
        and _NAMES.fullmatch(names) is not None
        and _VALUES.fullmatch(values) is not None
    )


def request_head(method: bytes, target: bytes, headers: Headers) -> h11.Request:
    """``h11.Request(method=method, target=target, headers=headers)``, the same event or the
    same ``h11.LocalProtocolError``, with the per-field checks done in :func:`fields_valid`."""
    if type(method) is bytes and type(target) is bytes and fields_valid(headers):
        return h11.Request(method=method, target=target, headers=headers, _parsed=True)
    return h11.Request(method=method, target=target, headers=headers)
