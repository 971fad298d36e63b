"""aioquic's internals are touched only by the modules that wrap it.

The wrapper modules (:data:`WRAPPERS`) subclass aioquic and read its private state behind
named, documented methods (``SpookyQuicConnection.stream_read_offset``,
``StreamScopedH3Connection.expected_content_length``, ``FlowControlledQuicConnection.
peer_certificate``, ...); ``spooky_trio.aioquic_compat`` checks at import that their
overrides still match aioquic. Every other module of ``src/spooky_trio`` and ``bench/`` uses
those methods, so an aioquic upgrade is reviewed in three files, not everywhere.

The check is a static heuristic over each module's ``ast`` (no type checker). An expression
is *aioquic-bound* when it is

* a name imported from ``aioquic`` (a module, class or function), or a class a wrapper
  module derives from aioquic (``SpookyQuicConnection``, ...);
* a parameter or variable annotated with a type mentioning one of those;
* a variable assigned (``=``, ``for``, ``with ... as``, ``:=``) from an aioquic-bound
  expression, within its function (flow-insensitive; closures inherit);
* an attribute, item or call result of an aioquic-bound expression (``quic._streams.get(i)``,
  ``stream.sender``, ``getattr(quic, "tls")``), or a call of an aioquic class;
* an attribute whose name some module assigns an aioquic-bound value to as ``self.NAME``
  anywhere (``self.quic = quic`` makes every ``x.quic`` bound: that is how ``conn.quic`` in
  quic.py is recognised without type inference).

Outside the wrappers, a module fails the check if it reads or writes a ``_private``
attribute (also via ``getattr``/``setattr``/``hasattr`` with a constant name) of an
aioquic-bound expression, imports a ``_private`` name from aioquic or imports the modules of
aioquic's stream and recovery state (``aioquic.quic.stream``, ``aioquic.quic.recovery``), or
defines a class with an aioquic base (subclassing is how internals get touched: such a class
belongs in a wrapper module). A false positive (a project attribute that happens to share a
name with an aioquic handle, e.g. ``ListenerPair.quic``) is fixed by a public accessor or a
different name, not by widening :data:`WRAPPERS`. ``test_the_check_catches_*`` run it over
the accesses this rule replaced, so the heuristic is known to catch them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "src" / "spooky_trio", ROOT / "bench"]
#: the modules that subclass aioquic and may read its internals (paths from the repository root)
WRAPPERS = frozenset({
    "src/spooky_trio/ingress/quic_engine.py",  # QuicConnection, tls.Context (server)
    "src/spooky_trio/ingress/h3.py",  # H3Connection (server)
    "src/spooky_trio/upstream/quic_engine.py",  # QuicConnection, H3Connection (upstream HTTP/3 and the operator client)
    "bench/loadgen.py",  # QuicConnectionProtocol (load generator)
})
#: aioquic modules whose classes exist only to be driven by QuicConnection's private hooks
INTERNAL_MODULES = ("aioquic.quic.stream", "aioquic.quic.recovery")

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _shallow(nodes: list[ast.AST]) -> Iterator[ast.AST]:
    """Every node under ``nodes``, not descending into nested functions or classes (the
    def/class node itself is yielded; its decorators, defaults and bases belong here)."""
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            outer: list[ast.AST] = [*node.decorator_list]
            if isinstance(node, ast.ClassDef):
                outer += [*node.bases, *node.keywords]
            else:
                outer += [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
            stack.extend(reversed(outer))
        else:
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _target_names(target: ast.AST) -> Iterator[str]:
    """The variables an assignment target binds (not those of ``x[i] = ...``, ``x.a = ...``)."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


class _Module:
    def __init__(self, rel: str, source: str, wrapper_classes: set[str]) -> None:
        self.rel = rel
        self.tree = ast.parse(source, rel)
        #: names this module imports from aioquic, plus the wrapper classes
        self.types = set(wrapper_classes)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aioquic":
                self.types.update(alias.asname or alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                self.types.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "aioquic")

    def _typed(self, annotation: ast.AST | None) -> bool:
        if annotation is None:
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval")
            except SyntaxError:
                return False
        return any(isinstance(n, ast.Name) and n.id in self.types for n in ast.walk(annotation))

    def bound(self, node: ast.AST, names: set[str], handles: set[str]) -> bool:
        if isinstance(node, ast.Name):
            return node.id in names or node.id in self.types
        if isinstance(node, ast.Attribute):
            return node.attr in handles or self.bound(node.value, names, handles)
        if isinstance(node, (ast.Subscript, ast.Await, ast.NamedExpr, ast.Starred)):
            return self.bound(node.value, names, handles)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
                return self.bound(node.args[0], names, handles)
            return self.bound(node.func, names, handles)
        if isinstance(node, ast.IfExp):
            return self.bound(node.body, names, handles) or self.bound(node.orelse, names, handles)
        if isinstance(node, ast.BoolOp):
            return any(self.bound(v, names, handles) for v in node.values)
        return False

    def scan(self, handles: set[str], findings: list[str] | None) -> set[str]:
        """Attribute names assigned an aioquic-bound value as ``self.NAME``; with
        ``findings``, append the violations (see the module docstring)."""
        found: set[str] = set()
        self._scope(self.tree.body, set(), handles, found, findings)
        return found

    def _scope(self, body: list[ast.AST], inherited: set[str], handles: set[str], found: set[str], findings: list[str] | None) -> None:
        names = set(inherited)
        nodes = list(_shallow(body))
        changed = True
        while changed:
            before = len(names)
            for node in nodes:
                pairs: list[tuple[ast.AST, bool]] = []
                if isinstance(node, ast.Assign):
                    value_bound = self.bound(node.value, names, handles)
                    for target in node.targets:
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) and len(target.elts) == len(node.value.elts):
                            pairs += [(t, self.bound(v, names, handles)) for t, v in zip(target.elts, node.value.elts)]
                        else:
                            pairs.append((target, value_bound))
                elif isinstance(node, ast.AnnAssign):
                    pairs.append((node.target, self._typed(node.annotation) or (node.value is not None and self.bound(node.value, names, handles))))
                elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                    pairs.append((node.target, self.bound(node.iter, names, handles)))
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    pairs.append((node.optional_vars, self.bound(node.context_expr, names, handles)))
                elif isinstance(node, ast.NamedExpr):
                    pairs.append((node.target, self.bound(node.value, names, handles)))
                for target, is_bound in pairs:
                    if not is_bound:
                        continue
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                        found.add(target.attr)
                    elif not isinstance(target, ast.Attribute):
                        names.update(_target_names(target))
            changed = len(names) != before
        for node in nodes:
            if findings is not None:
                self._check(node, names, handles, findings)
            if isinstance(node, ast.ClassDef):
                self._scope(node.body, names, handles, found, findings)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
                typed = {a.arg for a in params if self._typed(a.annotation)}
                local = {n for n in names if n not in {a.arg for a in params}} | typed
                self._scope(node.body, local, handles, found, findings)

    def _check(self, node: ast.AST, names: set[str], handles: set[str], findings: list[str]) -> None:
        where = f"{self.rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and _private(node.attr) and self.bound(node.value, names, handles):
            findings.append(f"{where}: {ast.unparse(node)} reads aioquic internals")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and self.bound(node.args[0], names, handles)):
            findings.append(f"{where}: {ast.unparse(node)} reads aioquic internals")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aioquic":
            module = node.module or ""
            for alias in node.names:
                if _private(alias.name) or module.startswith(INTERNAL_MODULES) or f"{module}.{alias.name}" in INTERNAL_MODULES:
                    findings.append(f"{where}: imports {module}.{alias.name} (aioquic internals)")
        elif isinstance(node, ast.Import):
            findings += [f"{where}: imports {a.name} (aioquic internals)" for a in node.names if a.name.startswith(INTERNAL_MODULES)]
        elif isinstance(node, ast.ClassDef) and any(self.bound(b, names, handles) for b in node.bases):
            findings.append(f"{where}: class {node.name} subclasses aioquic outside a wrapper module")


def check(modules: list[_Module]) -> list[str]:
    """Violations in ``modules`` (module docstring), handle attributes found to a fixpoint."""
    handles: set[str] = set()
    while True:
        grown = set(handles)
        for module in modules:
            grown |= module.scan(handles, None)
        if grown == handles:
            break
        handles = grown
    findings: list[str] = []
    for module in modules:
        if module.rel not in WRAPPERS:
            module.scan(handles, findings)
    return findings


def _wrapper_classes() -> set[str]:
    """The classes the wrapper modules derive from aioquic (``SpookyQuicConnection``, ...)."""
    classes: set[str] = set()
    for rel in WRAPPERS:
        module = _Module(rel, (ROOT / rel).read_text(), set())
        defined = [n for n in ast.walk(module.tree) if isinstance(n, ast.ClassDef)]
        while True:
            derived = {c.name for c in defined if any(module.bound(b, classes, set()) for b in c.bases)}
            if derived <= classes:
                break
            classes |= derived
    return classes


def _modules(paths: list[Path]) -> list[_Module]:
    classes = _wrapper_classes()
    return [_Module(p.relative_to(ROOT).as_posix(), p.read_text(), classes) for p in paths]


def test_only_wrapper_modules_touch_aioquic_internals() -> None:
    paths = sorted(p for root in SCANNED for p in root.rglob("*.py"))
    assert {(ROOT / rel) for rel in WRAPPERS} <= set(paths), "a wrapper module moved: update WRAPPERS"
    assert check(_modules(paths)) == []


# --- the heuristic catches what this rule replaced (the code before the named methods) ---

_BEFORE = {
    "quic_connection.py": '''
from spooky_trio.ingress.quic_engine import SpookyQuicConnection
from spooky_trio.ingress.h3 import StreamScopedH3Connection

class QuicConnectionTask:
    def __init__(self, listener, quic: SpookyQuicConnection, original_dcid: bytes) -> None:
        self.quic = quic
        self.h3 = StreamScopedH3Connection(quic)

    def _read_offset(self, stream_id: int) -> int:
        qstream = self.quic._streams.get(stream_id)
        return qstream.receiver.highest_offset if qstream is not None else 0

    def _start_request(self, stream_id):
        return self.h3._stream[stream_id].expected_content_length if stream_id in self.h3._stream else None

    async def wait_send_buffer_below(self, stream_id: int, limit: int) -> None:
        while True:
            qstream = self.quic.get_stream(stream_id)
            sender = qstream.sender
            if sender._buffer_stop - sender._buffer_start < limit or sender.reset_pending:
                return

    def all_sent_data_acked(self) -> bool:
        return all(s.sender._buffer_start == s.sender._buffer_stop for s in self.quic.streams())
''',
    "quic.py": '''
def _flush(self):
    for conn in self._dirty:
        if conn.quic._close_pending or conn.quic._state.name in ("CLOSING", "DRAINING", "TERMINATED"):
            conn.process_events()
''',
    "h3_transport.py": '''
from spooky_trio.upstream.quic_engine import FlowControlledQuicConnection

class H3Transport:
    def __init__(self, sock, peer, quic: FlowControlledQuicConnection) -> None:
        self._quic = quic

    @property
    def peer_certificate(self):
        tls = getattr(self._quic, "tls", None)
        return tls._peer_certificate if tls is not None else None
''',
    "loadgen.py": '''
from aioquic.asyncio.protocol import QuicConnectionProtocol

def _grow_buffers(proto: QuicConnectionProtocol) -> None:
    sock = proto._transport.get_extra_info("socket")

async def _one(proto: "H3LoadProtocol") -> bool:
    return proto._quic._close_event is None
''',
    "elsewhere.py": '''
from aioquic.quic.connection import QuicConnection, _private_helper
from aioquic.quic.stream import QuicStream

class Sneaky(QuicConnection):
    pass

def f(quic: QuicConnection):
    return getattr(quic, "_QuicConnection__frame_handlers")
''',
}

_EXPECTED = {
    "quic_connection.py": ["self.quic._streams", "self.h3._stream", "self.h3._stream", "sender._buffer_stop", "sender._buffer_start",
                           "s.sender._buffer_start", "s.sender._buffer_stop"],
    "quic.py": ["conn.quic._close_pending", "conn.quic._state"],
    "h3_transport.py": ["tls._peer_certificate"],
    "loadgen.py": ["proto._transport", "proto._quic", "proto._quic._close_event"],
    "elsewhere.py": ["_private_helper", "aioquic.quic.stream", "class Sneaky", "getattr(quic, '_QuicConnection__frame_handlers')"],
}


@pytest.mark.parametrize("name", sorted(_BEFORE))
def test_the_check_catches_the_replaced_accesses(name: str) -> None:
    classes = _wrapper_classes()
    modules = [_Module(f"before/{source_name}", source, classes) for source_name, source in _BEFORE.items()]
    findings = [f for f in check(modules) if f.startswith(f"before/{name}:")]
    for expected in _EXPECTED[name]:
        assert any(expected in f for f in findings), (expected, findings)


def test_the_check_leaves_project_privates_alone() -> None:
    source = '''
from spooky_trio.upstream.quic_engine import FlowControlledQuicConnection

class H3Transport:
    def __init__(self, quic: FlowControlledQuicConnection, listener) -> None:
        self._quic = quic
        self._listener = listener

    async def connect(self, client, conn):
        client._quic.connect(client._peer)      # the project's own attribute, then public API
        await client._wait_handshake(1.0)       # not aioquic
        if conn._nursery is None:               # QuicConnectionTask's own state
            self._listener._by_cid.clear()
        return self._quic.peer_certificate
'''
    assert check([_Module("clean.py", source, _wrapper_classes())]) == []
