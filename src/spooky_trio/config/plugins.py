"""Finding a plugin's code and making its filter: the check ``spooky-trio check``, the start
and every reload run (:func:`check_plugins`, with the file checks), and what the chain
builds per generation (:func:`make_filter`, from ``proxy/plugins.py``).

A factory is found by entry point (group ``spooky_trio.filters``, :mod:`importlib.metadata`:
installed packages, and any directory on ``sys.path`` holding a ``*.dist-info``) or by
import path (``package.module:attribute``), called with a fresh copy of the entry's
``config`` and its answer checked: an object with ``async def on_request`` and/or
``on_response`` (and optionally ``async def background``, ``request_body_limit: int``).
Whatever goes wrong is a :class:`PluginLoadError` naming the key it is about: the entry's
``entry_point`` or ``object`` (the code), ``config`` (the factory refused it; a
:class:`~spooky_trio.plugin.PluginConfigError` adds its own path inside ``config``) or the
entry itself (an incompatible API version, a factory that returned no filter).

Importing a plugin runs its code in this process: a module that fails to import or a factory
that raises is reported, never a traceback; one that hangs hangs the check (docs/plugins.md).
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable

import attrs

from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_plugins import ENTRY_POINT_GROUP, PluginConfig
from spooky_trio.plugin import Factory, IncompatibleApi, PluginConfigError, Request, ResponseHead


class PluginLoadError(Exception):
    """A plugin entry cannot be used: ``message`` and the ``path`` inside the entry it is
    about (``("entry_point",)``, ``("config", "header")``, ``()`` for the entry)."""

    def __init__(self, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


RequestHook = Callable[[Request], Awaitable[object]]
ResponseHook = Callable[[Request, ResponseHead], Awaitable[object]]
BackgroundTask = Callable[[], Awaitable[object]]


@attrs.frozen
class FilterHooks:
    """What a filter object offers, read once when it is made (no per-request lookups)."""

    on_request: RequestHook | None
    on_response: ResponseHook | None
    background: BackgroundTask | None
    #: read the request body (at most this many bytes) before the first hook; 0: never
    body_limit: int


def find_factory(plugin: PluginConfig, installed: importlib.metadata.EntryPoints | None = None) -> Factory:
    """The factory ``plugin`` names; ``installed``: the group's entry points, when the
    caller looked them up already."""
    if plugin.entry_point is not None:
        name = plugin.entry_point.strip()
        group = installed if installed is not None else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        found = list(group.select(name=name))
        if not found:
            known = ", ".join(sorted({ep.name for ep in group})) or "none"
            raise PluginLoadError(f"no entry point {name!r} in group {ENTRY_POINT_GROUP} (installed: {known})", ("entry_point",))
        if len({ep.value for ep in found}) > 1:
            raise PluginLoadError(f"entry point {name!r} is declared by several packages ({', '.join(sorted(ep.value for ep in found))}): "
                                  "name the one you mean with object", ("entry_point",))
        where, key = f"entry point {name!r} ({found[0].value})", "entry_point"
        try:
            factory: object = found[0].load()
        except (Exception, SystemExit) as exc:  # the plugin's module ran and failed
            raise PluginLoadError(f"cannot load {where}: {type(exc).__name__}: {exc}", (key,)) from None
    else:
        assert plugin.object is not None
        target = plugin.object.strip()
        module_name, _, attribute = target.partition(":")
        where, key = f"{target!r}", "object"
        try:
            factory = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:
            raise PluginLoadError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", (key,)) from None
        for part in attribute.split("."):
            try:
                factory = getattr(factory, part)
            except AttributeError:
                raise PluginLoadError(f"{module_name!r} has no attribute {attribute!r}", (key,)) from None
    if not callable(factory):
        raise PluginLoadError(f"{where} is a {type(factory).__name__}, not a callable (config) -> filter", (key,))
    return factory


def make_filter(plugin: PluginConfig, factory: Factory) -> tuple[object, FilterHooks]:
    """Call ``factory`` with a fresh copy of ``plugin.config`` and check what it returned."""
    try:
        instance = factory(copy.deepcopy(dict(plugin.config)))
    except PluginConfigError as exc:
        raise PluginLoadError(f"refused by the plugin: {exc.message}", ("config", *exc.path)) from None
    except IncompatibleApi as exc:
        raise PluginLoadError(str(exc)) from None
    except (Exception, SystemExit) as exc:
        raise PluginLoadError(f"the factory of {plugin.source()} failed: {type(exc).__name__}: {exc}", ("config",)) from None
    return instance, filter_hooks(instance, plugin.source())


def filter_hooks(instance: object, source: str) -> FilterHooks:
    """The hooks of ``instance`` (a factory's answer), or :class:`PluginLoadError`."""
    if inspect.iscoroutine(instance):
        instance.close()
        raise PluginLoadError(f"the factory of {source} is async: it must return the filter itself")
    for name in ("on_request", "on_response", "background"):
        hook = getattr(instance, name, None)
        if hook is not None and not inspect.iscoroutinefunction(hook):
            raise PluginLoadError(f"the filter of {source} ({type(instance).__name__}) has a {name} that is not an async def")
    on_request: RequestHook | None = getattr(instance, "on_request", None)
    on_response: ResponseHook | None = getattr(instance, "on_response", None)
    background: BackgroundTask | None = getattr(instance, "background", None)
    if on_request is None and on_response is None:
        raise PluginLoadError(f"the factory of {source} returned a {type(instance).__name__}, which has neither "
                              "async def on_request nor async def on_response")
    limit: object = getattr(instance, "request_body_limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise PluginLoadError(f"the filter of {source} has request_body_limit {limit!r}: a number of bytes >= 0 is expected")
    return FilterHooks(on_request, on_response, background, limit)


def check_plugins(config: Config) -> list[ConfigIssue]:
    """Every plugin entry's code found and its factory satisfied (module docstring); one
    issue per entry that fails, at the key it is about, with its line."""
    if not config.plugins:
        return []
    positions = PositionMap(config.source_positions)
    installed = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    issues = []
    for index, plugin in enumerate(config.plugins):
        path: KeyPath = ("plugins", index)
        try:
            make_filter(plugin, find_factory(plugin, installed))
        except PluginLoadError as exc:
            issues.append(positions.issue(path + exc.path, f"plugin {plugin.name!r}: {exc.message}", related=[path]))
    return issues
