"""The schema read as data: which keys exist, where, and with what markers.

Two users: the schema reference test (every key :func:`schema_keys` lists must be documented
in ``docs/configuration.md``) and ``check --spooky-strict`` (:func:`field_for` finds the field
a written key names). Both read the attrs classes themselves, so a key a later feature adds
to a schema class is picked up without editing a list.

Key paths are written as in the reference: ``upstream.<pool>.backends[].weight``; a map of
named entries is ``<name>`` (``<pool>`` for ``upstream``), a list entry is ``[]``. Each
class's fields are listed once, at the first place the walk meets the class (``listen`` before
``listeners[]``, ``upstream_tls`` before ``upstream.<pool>.tls``); elsewhere only the key
holding it is listed, and the reference says there that it has the same shape.
"""

from __future__ import annotations

import types
import typing
import attrs

from spooky_trio.config.markers import EXTENSION, NO_EFFECT
from spooky_trio.config.schema import INTERNAL, Config

_PLACEHOLDERS = {"upstream": "<pool>"}


@attrs.frozen
class SchemaKey:
    """One key of the schema: its reference path, the attrs field, and the field's type."""

    path: tuple[str, ...]
    attribute: attrs.Attribute  # type: ignore[type-arg]  # attrs' Attribute is generic in its value
    type: object

    @property
    def dotted(self) -> str:
        """``upstream.<pool>.backends[].weight``."""
        out = ""
        for element in self.path:
            out += element if element == "[]" or not out else "." + element
        return out

    @property
    def extension(self) -> bool:
        return bool(self.attribute.metadata.get(EXTENSION))

    @property
    def no_effect(self) -> bool:
        return bool(self.attribute.metadata.get(NO_EFFECT))


def type_hints(cls: type) -> dict[str, object]:
    """The resolved field types of an attrs class (the schema modules use postponed annotations)."""
    return dict(typing.get_type_hints(cls))


def attrs_classes(tp: object) -> list[type]:
    """The attrs classes a field type holds directly or as ``X | None``/a union of classes."""
    if isinstance(tp, type) and attrs.has(tp):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(tp) for member in attrs_classes(arg)]
    return []


def container_of(tp: object) -> tuple[str, object] | None:
    """(``"[]"`` or ``"<name>"``, item type) when ``tp`` is (optionally) a list or a map."""
    for arg in (tp, *(typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ())):
        origin = typing.get_origin(arg)
        if origin is list:
            return "[]", typing.get_args(arg)[0]
        if origin is dict:
            return "<name>", typing.get_args(arg)[1]
    return None


def yaml_fields(cls: type) -> list[attrs.Attribute]:  # type: ignore[type-arg]
    """The fields of ``cls`` that are YAML keys (loader-filled ones excluded)."""
    return [a for a in attrs.fields(cls) if not a.metadata.get(INTERNAL)]


def schema_keys(root: type = Config) -> list[SchemaKey]:
    """Every key the schema accepts, in field order, each class's fields once."""
    seen: set[type] = set()
    out: list[SchemaKey] = []
    listed: set[str] = set()

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        seen.add(cls)
        hints = type_hints(cls)
        for attribute in yaml_fields(cls):
            tp = hints[attribute.name]
            key = SchemaKey(prefix + (attribute.name,), attribute, tp)
            if key.dotted not in listed:
                listed.add(key.dotted)
                out.append(key)
            inner: tuple[str, ...] = key.path
            target = tp
            container = container_of(tp)
            if container is not None:
                element, target = container
                inner += (_PLACEHOLDERS.get(attribute.name, element),)
            for member in attrs_classes(target):
                if member not in seen:
                    walk(member, inner)

    walk(root, ())
    return out


def field_for(classes: list[type], key: object) -> tuple[attrs.Attribute, object] | None:  # type: ignore[type-arg]
    """The field named ``key`` in the first of ``classes`` that has one, with its type."""
    for cls in classes:
        for attribute in yaml_fields(cls):
            if attribute.name == key:
                return attribute, type_hints(cls)[attribute.name]
    return None
