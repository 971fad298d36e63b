"""Which aioquic releases spooky-trio runs on, and the import-time check that the installed
one still has the private methods the aioquic wrapper modules override or call.

Three modules touch aioquic's internals (``ingress/quic_engine.py``, ``ingress/h3.py``,
``upstream/quic_engine.py``; ``tests/unit/test_aioquic_boundary.py`` keeps it that way). They
override private hooks (``QuicConnection._write_stream_limits``,
``QuicConnection._replenish_connection_ids`` (where aioquic draws new connection IDs from
``os.urandom``: the server's CIDs come from its own generator), ``tls.Context.
_server_handle_hello``, ``H3Connection._receive_request_or_push_data``, ...) and those change
between aioquic minor releases: 1.6 dropped a parameter of ``_server_handle_hello``, 1.7
rewrote ``_write_ack_frame`` and the H3 request-stream handling. A hook that aioquic no longer
calls is ignored silently (the SNI choice or the consumption-based windows would just stop
happening) and one whose parameters changed fails on the first packet that reaches it. So
each wrapper module calls :func:`check_overrides` / :func:`require_method` at import: an
unsupported aioquic fails at start-up with :class:`UnsupportedAioquic`, which names the
supported range and the hook that moved.

The check covers methods (their existence and parameter names and kinds). Private *data*
attributes (``_streams``, ``_close_pending``, ...) exist only on instances; the test suite
covers those.

:func:`install_fast_header_checks` replaces aioquic's two HTTP/3 field checks
(``aioquic.h3.connection.validate_header_name`` / ``validate_header_value``, which walk each
byte in Python: 9.5 us for a 450-byte bearer token, 1.0 us with a regex) with compiled
regular expressions that accept exactly the same bytes; a refused field
still goes through aioquic's own function, so the error is aioquic's. It is the patch we
would offer upstream; ``tests/unit/test_aioquic_compat.py`` holds the two to the same
answers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aioquic
import aioquic.h3.connection as _h3

#: the aioquic releases the wrapper modules were written and tested against; pyproject.toml
#: pins the same range (tests/unit/test_aioquic_compat.py compares the two)
SUPPORTED_AIOQUIC = ">=1.7.2,<1.8"

_F = TypeVar("_F", bound=Callable[..., Any])


class UnsupportedAioquic(ImportError):
    """The installed aioquic lacks a private method a wrapper module relies on (or changed
    its parameters): install a release in :data:`SUPPORTED_AIOQUIC`."""


def overrides(func: _F) -> _F:
    """Mark a method as an override of an aioquic private method, for :func:`check_overrides`.

    Returns ``func`` itself, not a wrapper: the hooks run per packet and cost nothing extra.
    """
    func.__aioquic_override__ = True  # type: ignore[attr-defined]
    return func


def _parameters(func: Any) -> list[tuple[str, Any]]:
    """(name, kind) of every parameter after ``self``."""
    params = list(inspect.signature(func).parameters.values())[1:]
    return [(p.name, p.kind) for p in params]


def _describe(params: list[tuple[str, Any]]) -> str:
    """A parameter list as written in a ``def`` (without ``self``), e.g. ``*, now, packets``."""
    parts: list[str] = []
    star = False
    for name, kind in params:
        if kind is inspect.Parameter.VAR_POSITIONAL:
            name, star = f"*{name}", True
        elif kind is inspect.Parameter.VAR_KEYWORD:
            name = f"**{name}"
        elif kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(name)
    return ", ".join(parts)


def _fail(what: str) -> UnsupportedAioquic:
    return UnsupportedAioquic(
        f"spooky-trio needs aioquic{SUPPORTED_AIOQUIC} (installed: {getattr(aioquic, '__version__', 'unknown')}): {what}"
    )


def require_method(owner: type, name: str, parameters: Sequence[str]) -> None:
    """Raise :class:`UnsupportedAioquic` unless ``owner`` (an aioquic class) has a method
    ``name`` whose parameters after ``self`` are named ``parameters``, in that order."""
    func = owner.__dict__.get(name)
    if func is None or not callable(func):
        raise _fail(f"{owner.__module__}.{owner.__qualname__} has no method {name}")
    actual = [param for param, _kind in _parameters(func)]
    if actual != list(parameters):
        raise _fail(f"{owner.__qualname__}.{name} takes ({', '.join(actual)}), expected ({', '.join(parameters)})")


def check_overrides(cls: type) -> None:
    """Raise :class:`UnsupportedAioquic` unless every method of ``cls`` marked with
    :func:`overrides` overrides a method of an aioquic base class that takes the same
    parameters (names and kinds; annotations and defaults are not compared)."""
    for name, func in cls.__dict__.items():
        if not getattr(func, "__aioquic_override__", False):
            continue
        base = next((b for b in cls.__mro__[1:] if name in b.__dict__), None)
        if base is None or not base.__module__.startswith("aioquic."):
            bases = ", ".join(b.__qualname__ for b in cls.__mro__[1:] if b.__module__.startswith("aioquic."))
            raise _fail(f"{cls.__qualname__}.{name} overrides a private method that {bases} no longer has")
        ours, theirs = _parameters(func), _parameters(base.__dict__[name])
        if ours != theirs:
            raise _fail(
                f"{cls.__qualname__}.{name} overrides {base.__qualname__}.{name}({_describe(theirs)}) "
                f"with ({_describe(ours)})"
            )


#: the bytes aioquic's ``validate_header_name`` accepts: visible ASCII but upper case letters,
#: a colon only first (RFC 9113 8.2.1 as aioquic reads it for HTTP/3)
_H3_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]*")
#: ... and ``validate_header_value``: no NUL, CR or LF, no SP or HTAB first or last
_H3_VALUE = re.compile(rb"(?:[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?)?")
#: aioquic's own checks (they raise its MessageError for what the fast ones do not accept)
AIOQUIC_VALIDATE_HEADER_NAME: Callable[[bytes], None] = _h3.validate_header_name
AIOQUIC_VALIDATE_HEADER_VALUE: Callable[[bytes, bytes], None] = _h3.validate_header_value


def fast_validate_header_name(key: bytes) -> None:
    """aioquic's ``validate_header_name``, one regex match when the name is valid."""
    if _H3_NAME.fullmatch(key) is None:
        AIOQUIC_VALIDATE_HEADER_NAME(key)


def fast_validate_header_value(key: bytes, value: bytes) -> None:
    """aioquic's ``validate_header_value``, one regex match when the value is valid."""
    if _H3_VALUE.fullmatch(value) is None:
        AIOQUIC_VALIDATE_HEADER_VALUE(key, value)


def install_fast_header_checks() -> None:
    """Make aioquic's HTTP/3 field validation use the fast checks (module docstring);
    idempotent. Raises :class:`UnsupportedAioquic` if aioquic no longer has the functions
    with these parameters (the replacement would then silently do nothing)."""
    for name, ours, params in (("validate_header_name", fast_validate_header_name, ["key"]),
                               ("validate_header_value", fast_validate_header_value, ["key", "value"])):
        theirs = getattr(_h3, name, None)
        if theirs is None or not callable(theirs):
            raise _fail(f"aioquic.h3.connection has no function {name}")
        if theirs is not ours and [p for p in inspect.signature(theirs).parameters] != params:
            raise _fail(f"aioquic.h3.connection.{name} no longer takes ({', '.join(params)})")
        setattr(_h3, name, ours)
