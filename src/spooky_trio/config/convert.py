"""cattrs converter for the schema, with strict scalar hooks and error flattening.

Input is plain Python data (``dict``/``list``/``str``/``int``/``float``/``bool``/``None``)
already stripped of ruamel's scalar subclasses. Rules enforced here:

- ``int`` accepts only integers (not bools, floats or strings); ``float`` accepts ints and
  floats; ``bool`` only booleans; ``str`` only strings.
- ``list[...]`` requires a sequence, ``dict[...]`` a mapping, attrs classes a mapping.
- Unknown keys are errors (``forbid_extra_keys``); ``null`` on a key of an attrs class means
  the key was omitted, so the default applies (or the key is reported as required).
- ``Literal`` enums accept the spellings Spooky accepts, with Spooky's case rules
  (:mod:`spooky_trio.config.spellings`), and are stored canonical.

:func:`structure_errors` turns cattrs' nested exception groups into ``(path, kind, message)``.
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from spooky_trio.config.issues import KeyPath
from spooky_trio.config.schema import INTERNAL, Config
from spooky_trio.config.schema_auth import Secret
from spooky_trio.config.schema_plugins import PluginSettings
from spooky_trio.config.spellings import canonical, describe_choices, near_miss

#: Error kinds produced by :func:`structure_errors`.
UNKNOWN_KEY = "unknown-key"
MISSING_KEY = "missing-key"
BAD_VALUE = "bad-value"


def describe(value: Any) -> str:
    """Human description of a YAML value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {describe(value)}")
    return int(value)


def _structure_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {describe(value)}")
    return float(value)


def _structure_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {describe(value)}")
    return value


def _structure_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {describe(value)}")
    return str(value)


def _structure_secret(value: Any, _: Any) -> Secret:
    if not isinstance(value, str):  # never quote a secret, even a mistyped one
        raise TypeError(f"expected a string, got {describe(value).split(' (')[0]}")
    return Secret(value)


def _structure_plugin_settings(value: Any, _: Any) -> PluginSettings:
    # free-form data for the plugin's factory: any YAML below the top, string keys at it;
    # never quoted in an error (it may hold a secret)
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {describe(value).split(' (')[0]}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"map keys must be strings, got {describe(key)}")
    return PluginSettings(copy.deepcopy(value))


def _make_literal_hook(literal: Any) -> Callable[[Any, Any], str]:
    def hook(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected one of {describe_choices(literal)}; got {describe(value)}")
        result = canonical(literal, value)
        if result is None:
            close = near_miss(literal, value)
            hint = f" (exact spelling: did you mean {close!r}?)" if close else ""
            raise ValueError(f"invalid value {value!r}: must be one of {describe_choices(literal)}{hint}")
        return result

    return hook


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_structure_hook(PluginSettings, _structure_plugin_settings)
    conv.register_structure_hook_factory(_is_literal, _make_literal_hook)

    def list_factory(tp: Any) -> Callable[[Any, Any], list[Any]]:
        (item_type,) = typing.get_args(tp)

        def hook(value: Any, _: Any) -> list[Any]:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {describe(value)}")
            out: list[Any] = []
            errors: list[Exception] = []
            for index, item in enumerate(value):
                try:
                    out.append(conv.structure(item, item_type))
                except Exception as exc:  # noqa: BLE001 - collected and re-raised as a group
                    exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
            return out

        return hook

    def dict_factory(tp: Any) -> Callable[[Any, Any], dict[Any, Any]]:
        key_type, value_type = typing.get_args(tp)

        def hook(value: Any, _: Any) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise TypeError(f"expected a mapping, got {describe(value)}")
            out: dict[Any, Any] = {}
            errors: list[Exception] = []
            for key, item in value.items():
                try:
                    if key_type is str and not isinstance(key, str):
                        raise TypeError(f"map keys must be strings, got {describe(key)}")
                    out[key] = conv.structure(item, value_type)
                except Exception as exc:  # noqa: BLE001 - collected and re-raised as a group
                    exc.add_note(IterableValidationNote(f"@ key {key!r}", key, value_type))
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
            return out

        return hook

    def attrs_factory(cls: type) -> Callable[[Any, Any], Any]:
        omitted = {a.name: override(omit=True) for a in attrs.fields(cls) if a.metadata.get(INTERNAL)}
        # cattrs takes per-attribute overrides as keyword arguments, which its stubs cannot type
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **omitted  # type: ignore[arg-type]
        )
        internal_names = set(omitted)

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a mapping, got {describe(value)}")
            present = {k: v for k, v in value.items() if v is not None and k not in internal_names}
            sneaked = internal_names & set(value)
            if not sneaked:
                return inner(present, cls)
            # loader-filled fields are not YAML keys: report them with the other errors
            extra = ForbiddenExtraKeysError("", cls, sneaked)
            try:
                inner(present, cls)
            except ClassValidationError as exc:
                raise ClassValidationError(exc.message, [*exc.exceptions, extra], cls) from None
            raise ClassValidationError(f"While structuring {cls.__name__}", [extra], cls)

        return hook

    conv.register_structure_hook_factory(_is_list, list_factory)
    conv.register_structure_hook_factory(_is_dict, dict_factory)
    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    return conv


CONVERTER = _make_converter()


def structure_config(data: dict[str, Any]) -> Config:
    """Structure plain data into a :class:`Config`; raises cattrs' exception groups on failure."""
    return CONVERTER.structure(data, Config)


def _note_step(exc: BaseException) -> KeyPath:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote):
            return (note.index,)
    return ()


def _unknown_key_message(key: Any, cls: type) -> str:
    known = [a.name for a in attrs.fields(cls) if not a.metadata.get(INTERNAL)]
    message = f"unknown key {key!r}"
    if isinstance(key, str):
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"{message} (did you mean {close[0]!r}?)"
    return f"{message}; allowed keys: {', '.join(known)}"


class StructureError(NamedTuple):
    """One structuring failure. ``expected`` is the schema type (known for missing keys)."""

    path: KeyPath
    kind: str
    message: str
    expected: Any = None


def placeholder_for(expected: Any) -> Any:
    """A stand-in value of schema type ``expected`` (used to keep structuring a file that
    lacks a required key), or ``None`` when there is no obvious one."""
    if expected is str:
        return ""
    if _is_list(expected):
        return []
    if _is_dict(expected) or (isinstance(expected, type) and attrs.has(expected)):
        return {}
    return None


def structure_errors(exc: BaseException, path: KeyPath = ()) -> Iterator[StructureError]:
    """Flatten a structuring failure into :class:`StructureError` entries.

    ``kind`` is :data:`UNKNOWN_KEY` (path names the unknown key), :data:`MISSING_KEY`
    (path names the required key that is absent) or :data:`BAD_VALUE`.
    """
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields, key=str):
            yield StructureError(path + (key,), UNKNOWN_KEY, _unknown_key_message(key, exc.cl))
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            yield from structure_errors(sub, path + _note_step(sub))
        return
    if isinstance(exc, KeyError):
        expected = next((n.type for n in getattr(exc, "__notes__", ()) if isinstance(n, AttributeValidationNote)), None)
        yield StructureError(path, MISSING_KEY, "required key is missing", expected)
        return
    yield StructureError(path, BAD_VALUE, str(exc) or type(exc).__name__)
