"""Configuration reload: the transaction, history, rollback and canary (see docs/reload.md).

Every trigger (control API ``reload_path`` and ``/admin/config/*``, SIGHUP) ends in
:class:`ConfigManager`, which serializes them with one :class:`trio.Lock` and runs the
transaction:

1. parse and validate the YAML text (every problem with its key path and line), then check
   the files it names (certificates, keys, CA bundles);
2. build the new :class:`Generation` beside the running one (backend states are looked up,
   not reconfigured: :meth:`Generation.activate` runs at the commit point);
3. stage it on the server (:meth:`Server.stage`): added listeners and moved endpoints are
   bound, a changed log file is opened. Any failure undoes the staging;
4. (``persist``) write the text to the config file: temp file + ``os.replace``;
5. commit (:meth:`Server.commit`): around the one-reference swap in the
   :class:`~spooky_trio.core.generations.GenerationSet` this manager owns (the request
   path reads it), the health supervisor, the upstream pool, removed listeners and
   endpoints follow.

A failure in steps 1-4 leaves the running generation untouched. The generations replaced
by a commit are kept (the last :data:`HISTORY` of them) for :meth:`ConfigManager.rollback`.

(About 415 lines, over the house's ~400: every step above, the history and the canary run
under the one lock and share its state; diffing and persisting already live apart,
config/diff.py and config/persist.py.)
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from spooky_trio.config import Config, ConfigError, check_files, config_warnings, load_config_text
from spooky_trio.config.diff import diff_line, diff_summary
from spooky_trio.config.issues import ConfigIssue
from spooky_trio.config.persist import write_atomic
from spooky_trio.core.generation import Generation
from spooky_trio.core.generations import GenerationSet
from spooky_trio.core.state import StateStore
from spooky_trio.observability.metrics import Metrics
from spooky_trio.serving.staging import Staged

log = logging.getLogger("spooky.reload")

#: replaced generations kept for rollback
HISTORY = 10
#: reload results, the values of ``spooky_config_reload_total{result}``
RESULTS = ("success", "invalid", "failed")


@attrs.frozen
class Applied:
    """A generation as it was applied: where its config came from and when."""

    generation: Generation
    #: the YAML text (None when unknown: the startup config of a server built from a Config)
    text: str | None
    #: "startup", "file" (re-read from the config file), "api" (a posted document)
    source: str
    #: what asked for it: "startup", "SIGHUP", "reload_path", "apply", "rollback", "promote"
    trigger: str
    applied_at: float = attrs.Factory(time.time)

    def describe(self) -> dict[str, object]:
        return {
            "generation": self.generation.number,
            "sha256": self.generation.config.source_sha256,
            "applied_at": datetime.datetime.fromtimestamp(self.applied_at, datetime.timezone.utc).isoformat(),
            "source": self.source,
            "trigger": self.trigger,
        }


class StageError(Exception):
    """A reload cannot be staged; ``issues`` lists every problem (key path, line, message)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


class ReloadTarget(Protocol):
    """What the reload transaction drives: the serving process (``serving/server.py``)."""

    #: the file a reload re-reads and ``persist=true`` writes (None: started from text)
    config_path: str | None
    #: applied to every loaded config (a worker's private control API), or None
    adapt_config: Callable[[Config], Config] | None
    state: StateStore
    metrics: Metrics
    draining: bool
    serving: bool

    def stage(self, config: Config, generation: Generation, *, listeners_and_services: bool = True) -> Staged:
        """Prepare ``generation`` and what ``config`` needs beside the running server; raises StageError."""
        ...

    async def commit(self, staged: Staged, swap: Callable[[], None], *, canary: bool = False) -> Callable[[], None]:
        """Go over to ``staged``, calling ``swap()`` at the switch point; returns the after-answer step."""
        ...

    async def follow_generations(self) -> None:
        """Health checks and pooled connections follow the live generations."""
        ...


class ReloadFailed(Exception):
    """A transaction failed; ``status`` is the HTTP status to answer, ``issues`` every problem."""

    def __init__(self, status: int, result: str, issues: list[ConfigIssue]) -> None:
        self.status = status
        self.result = result
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


@attrs.frozen
class Outcome:
    """What a trigger answers: HTTP status, JSON body, and a step to run after answering."""

    status: int
    body: dict[str, object]
    after: Callable[[], None] | None = None


def issue_json(issue: ConfigIssue) -> dict[str, object]:
    return {"path": issue.path, "line": issue.line, "column": issue.column, "message": issue.message}


def _whole(message: str) -> list[ConfigIssue]:
    return [ConfigIssue("", None, None, message)]


class ConfigManager:
    """The reload transaction for a :class:`~spooky_trio.serving.server.Server` (module docstring)."""

    def __init__(self, server: ReloadTarget, generation: Generation) -> None:
        self.server = server
        self.lock = trio.Lock()
        #: what requests use: written here only (by the transactions below)
        self.generations = GenerationSet(generation)
        self.current = Applied(generation, self._startup_text(server.config_path, generation), "startup", "startup")
        #: replaced generations, newest last
        self.history: collections.deque[Applied] = collections.deque(maxlen=HISTORY)
        #: the staged generation taking a share of new requests, or None
        self.canary: Applied | None = None
        self._next_number = generation.number + 1
        self._counter = getattr(server.metrics, "config_reloads", None)
        #: finished transactions (any result), for :meth:`wait_transactions`
        self.transactions = 0
        self._finished = trio.Event()

    # -- triggers --

    async def reload_file(self, trigger: str = "reload_path") -> Outcome:
        """Re-read the config file and apply it (control API ``reload_path``, SIGHUP)."""
        path = self.server.config_path
        if path is None:
            return self._fail(ReloadFailed(409, "invalid", _whole("the server was not started from a config file: nothing to re-read")), trigger)
        try:
            raw = await trio.Path(path).read_bytes()
        except OSError as exc:
            return self._fail(ReloadFailed(422, "invalid", _whole(f"cannot read config file {path}: {exc.strerror or exc}")), trigger)
        return await self.apply(raw, trigger=trigger, source="file")

    async def apply(
        self, body: bytes, *, trigger: str = "apply", source: str = "api", persist: bool = False, canary_percent: float | None = None
    ) -> Outcome:
        """Run the transaction for the YAML ``body`` (see the module docstring)."""
        async with self.lock:
            try:
                self._check_serving()
                text = self._decode(body)
                if self.canary is not None:
                    raise ReloadFailed(409, "invalid", _whole(
                        f"canary generation {self.canary.generation.number} is active: POST /admin/config/promote or /admin/config/rollback first"))
                if persist and canary_percent is not None:
                    raise ReloadFailed(400, "invalid", _whole(
                        "persist=true cannot be combined with canary_percent: use POST /admin/config/promote?persist=true"))
                if persist and self.server.config_path is None:
                    raise ReloadFailed(409, "invalid", _whole("persist=true needs a config file: the server was not started from one"))
                config = self._load(text, source)
                if canary_percent is not None:
                    self._check_canary(config)
                generation = self._build(config, self._next_number, self.server.state)
                staged = self._stage(config, generation, listeners_and_services=canary_percent is None)
                if persist:
                    assert self.server.config_path is not None  # checked above
                    try:
                        write_atomic(self.server.config_path, text)
                    except OSError as exc:
                        staged.abort()
                        raise ReloadFailed(500, "failed", _whole(f"cannot write {self.server.config_path}: {exc.strerror or exc}")) from exc
                diff = diff_summary(self.generations.stable.config, config)
                generations = self.generations
                if canary_percent is not None:
                    percent = canary_percent

                    def swap() -> None:
                        generations.stage_canary(generation, percent)
                else:
                    def swap() -> None:
                        generations.commit(generation)
                with trio.CancelScope(shield=True):  # a commit is never left half done
                    after = await self.server.commit(staged, swap, canary=canary_percent is not None)
            except ReloadFailed as exc:
                return self._fail(exc, trigger)
            self._next_number += 1
            applied = Applied(generation, text, source, trigger)
            if canary_percent is not None:
                self.canary = applied
            else:
                self.history.append(self.current)
                self.current = applied
            self._count("success")
            what = f"canary generation {generation.number} ({canary_percent:g}% of new requests)" if canary_percent is not None else f"config generation {generation.number}"
            log.info("%s applied (%s, %s, sha256 %s%s): %s", what, trigger, source, config.source_sha256[:12],
                     ", persisted" if persist else "", diff_line(diff))
            warnings = config_warnings(config)
            for warning in warnings:
                log.warning("config warning: %s", warning)
            body_out = {"result": "applied", **applied.describe(), "persisted": persist, "diff": diff,
                        "warnings": [issue_json(w) for w in warnings]}
            if canary_percent is not None:
                body_out["canary_percent"] = canary_percent
            return Outcome(200, body_out, after)

    async def validate(self, body: bytes) -> Outcome:
        """Dry run: parse, validate, check files and build (with a private state store); the
        answer lists every error or the diff against the serving config. Nothing is bound."""
        try:
            text = self._decode(body)
            config = self._load(text, "api")
            self._build(config, 0, StateStore())
        except ReloadFailed as exc:
            return Outcome(exc.status, {"result": "invalid", "generation": self.generations.stable.number,
                                        "errors": [issue_json(i) for i in exc.issues]})
        return Outcome(200, {"result": "valid", "sha256": config.source_sha256,
                             "diff": diff_summary(self.generations.stable.config, config),
                             "warnings": [issue_json(w) for w in config_warnings(config)]})

    async def rollback(self, *, persist: bool = False) -> Outcome:
        """Drop the canary if one is active; otherwise return to the previous generation."""
        async with self.lock:
            server = self.server
            if self.canary is not None:
                dropped = self.canary
                self.canary = None
                self.generations.drop_canary()
                with trio.CancelScope(shield=True):
                    await server.follow_generations()
                self._count("success")
                log.info("canary generation %d rolled back; generation %d serves every request",
                         dropped.generation.number, self.generations.stable.number)
                return Outcome(200, {"result": "canary rolled back", "dropped": dropped.describe(), **self.current.describe()})
            if not self.history:
                return self._fail(ReloadFailed(409, "invalid", _whole("no previous generation to roll back to")), "rollback")
            previous = self.history[-1]
            config = previous.generation.config
            try:
                self._check_serving()
                if persist:
                    if server.config_path is None or previous.text is None:
                        raise ReloadFailed(409, "invalid", _whole("persist=true needs a config file and the previous generation's text"))
                staged = self._stage(config, previous.generation, listeners_and_services=True)
                if persist:
                    try:
                        write_atomic(server.config_path, previous.text)  # type: ignore[arg-type]
                    except OSError as exc:
                        staged.abort()
                        raise ReloadFailed(500, "failed", _whole(f"cannot write {server.config_path}: {exc.strerror or exc}")) from exc
                diff = diff_summary(self.generations.stable.config, config)
                generations = self.generations
                with trio.CancelScope(shield=True):
                    after = await server.commit(staged, lambda: generations.commit(previous.generation))
            except ReloadFailed as exc:
                return self._fail(exc, "rollback")
            self.history.pop()
            replaced = self.current
            self.current = Applied(previous.generation, previous.text, previous.source, "rollback")
            self._count("success")
            log.info("rolled back from generation %d to generation %d (sha256 %s%s): %s", replaced.generation.number,
                     previous.generation.number, config.source_sha256[:12], ", persisted" if persist else "", diff_line(diff))
            return Outcome(200, {"result": "rolled back", **self.current.describe(), "replaced": replaced.describe(),
                                 "persisted": persist, "diff": diff}, after)

    async def promote(self, *, persist: bool = False) -> Outcome:
        """Make the canary the generation for every request (``persist``: and write its text
        to the config file)."""
        async with self.lock:
            if self.canary is None:
                return self._fail(ReloadFailed(409, "invalid", _whole("no canary generation to promote")), "promote")
            server = self.server
            canary = self.canary
            if persist:
                try:
                    if server.config_path is None:
                        raise ReloadFailed(409, "invalid", _whole("persist=true needs a config file: the server was not started from one"))
                    try:
                        write_atomic(server.config_path, canary.text or "")
                    except OSError as exc:
                        raise ReloadFailed(500, "failed", _whole(f"cannot write {server.config_path}: {exc.strerror or exc}")) from exc
                except ReloadFailed as exc:
                    return self._fail(exc, "promote")
            canary.generation.activate()  # its health settings now apply to shared backends too
            self.generations.promote()
            self.canary = None
            self.history.append(self.current)
            self.current = Applied(canary.generation, canary.text, canary.source, "promote")
            with trio.CancelScope(shield=True):
                await server.follow_generations()
            self._count("success")
            log.info("canary generation %d promoted: it serves every request%s", canary.generation.number, " (persisted)" if persist else "")
            return Outcome(200, {"result": "promoted", **self.current.describe(), "persisted": persist})

    def describe(self) -> dict[str, object]:
        """``GET /admin/config``."""
        return {
            **self.current.describe(),
            "path": self.server.config_path,
            "canary": None if self.canary is None else {**self.canary.describe(), "percent": self.generations.canary_percent},
            "history": [entry.describe() for entry in reversed(self.history)],
        }

    # -- steps --

    @staticmethod
    def _startup_text(path: str | None, generation: Generation) -> str | None:
        """The config file's text when it still is what the server started with (for a
        rollback with persist=true to the startup generation)."""
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return text if hashlib.sha256(text.encode("utf-8")).hexdigest() == generation.config.source_sha256 else None

    def _check_serving(self) -> None:
        if self.server.draining or not self.server.serving:
            raise ReloadFailed(409, "invalid", _whole("the server is not serving (starting or draining): nothing is reloaded"))

    @staticmethod
    def _decode(body: bytes) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReloadFailed(400, "invalid", _whole(f"the config document is not valid UTF-8 (byte {exc.start})")) from None

    def _load(self, text: str, source: str) -> Config:
        name = self.server.config_path if source == "file" and self.server.config_path else "the config document"
        try:
            config = load_config_text(text, source=name)
        except ConfigError as exc:
            # 400: not a config document at all (YAML syntax, empty, not a mapping); 422: it
            # is one, and breaks rules
            unparsable = all(issue.path == "" for issue in exc.issues)
            raise ReloadFailed(400 if unparsable else 422, "invalid", exc.issues) from None
        problems = check_files(config)
        if problems:
            raise ReloadFailed(422, "invalid", problems)
        adapt = self.server.adapt_config
        return config if adapt is None else adapt(config)

    def _check_canary(self, config: Config) -> None:
        current = self.generations.stable.config
        fixed = [
            ("listeners", config.effective_listeners() != current.effective_listeners()),
            ("log", config.log != current.log),
            ("observability.metrics", config.observability.metrics != current.observability.metrics),
            ("observability.control_api", config.observability.control_api != current.observability.control_api),
        ]
        changed = [name for name, differs in fixed if differs]
        if changed:
            raise ReloadFailed(422, "invalid", [
                ConfigIssue(name, None, None, "a canary shares the process's listeners, log and endpoints and cannot change them: "
                            "apply without canary_percent") for name in changed])

    @staticmethod
    def _build(config: Config, number: int, state: StateStore) -> Generation:
        try:
            return Generation.build(config, number, state=state, activate=False)
        except Exception as exc:  # noqa: BLE001 - a compile error of a config that validated
            raise ReloadFailed(422, "failed", _whole(f"cannot build the generation: {exc}")) from exc

    def _stage(self, config: Config, generation: Generation, *, listeners_and_services: bool) -> Staged:
        try:
            return self.server.stage(config, generation, listeners_and_services=listeners_and_services)
        except StageError as exc:
            raise ReloadFailed(422, "failed", exc.issues) from exc

    def _count(self, result: str) -> None:
        """One transaction ended with ``result`` (each one calls this exactly once)."""
        if self._counter is not None:
            self._counter.labels(result=result).inc()
        self.transactions += 1
        self._finished.set()
        self._finished = trio.Event()

    async def wait_transactions(self, count: int) -> None:
        """Return once ``count`` transactions have finished (a SIGHUP reload runs in the
        background: tests and tools wait for it here instead of polling)."""
        while self.transactions < count:
            await self._finished.wait()

    def _fail(self, exc: ReloadFailed, trigger: str) -> Outcome:
        self._count(exc.result)
        log.warning("config reload (%s) rejected, generation %d keeps serving: %s", trigger, self.generations.stable.number,
                    "; ".join(str(issue) for issue in exc.issues))
        return Outcome(exc.status, {"result": exc.result, "generation": self.generations.stable.number,
                                    "errors": [issue_json(issue) for issue in exc.issues]})
