"""Logging set-up from ``log.*``: levels (with Spooky's names), plain or JSON lines, file output."""

from __future__ import annotations

import json
import logging
import sys
import time

from spooky_trio.config import LogConfig

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "off": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc when there is a traceback).

    Access-log records (``spooky.access``) carry their fields in ``record.access``; those
    become top-level keys of the object, next to ts/level/logger/msg.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_config: LogConfig) -> None:
    """Install one handler on the root logger per ``log_config`` (replacing earlier ones)."""
    install_handler(build_handler(log_config), log_config)


def build_handler(log_config: LogConfig) -> logging.Handler:
    """The handler ``log_config`` asks for; raises OSError when the log file cannot be opened
    (a reload builds it before its commit point, so a bad path fails the transaction)."""
    if log_config.file.enabled:
        handler: logging.Handler = logging.FileHandler(log_config.file.path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def install_handler(handler: logging.Handler, log_config: LogConfig) -> None:
    """Make ``handler`` the root logger's only handler and apply ``log_config.level``;
    replaced handlers are closed (a log file a reload moved away from is released)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old is not handler and isinstance(old, logging.FileHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS.get(log_config.level, logging.INFO))
    # library chatter stays at warning unless we trace
    level = TRACE if log_config.level == "trace" else logging.WARNING
    for noisy in LIBRARY_LOGGERS:
        logging.getLogger(noisy).setLevel(level)
    quiet_hpack(log_config.level != "trace")


class _WithoutDebug:
    """A logger whose ``debug`` returns at once; everything else is the wrapped logger's."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    #: any arguments, nothing done, and a C call rather than a Python frame: an empty
    #: format string ignores what it is given
    debug = "".format

    def __getattr__(self, name: str) -> object:
        return getattr(self._logger, name)


def quiet_hpack(quiet: bool) -> None:
    """Below ``trace`` hpack's debug lines are never emitted (its logger is at warning,
    above), yet hpack asks for one per integer and per field it codes: ~20-45 calls to
    ``Logger.debug`` and ``isEnabledFor`` per request over HTTP/2 (docs/performance.md
    "Round two"). When ``quiet``, hpack's module logger is replaced by one whose ``debug``
    is a single no-op C call; at ``trace`` the real logger is put back, so its lines appear.
    hpack 4 logs nothing else from that module; other levels still reach the real logger."""
    import hpack.hpack

    real = logging.getLogger(hpack.hpack.__name__)
    # a module attribute hpack reads at each call: the narrowest place to say "no debug"
    setattr(hpack.hpack, "log", _WithoutDebug(real) if quiet else real)  # noqa: B010


#: libraries whose loggers stay at warning below ``trace``: their debug lines carry request
#: headers (hpack: every decoded field, Authorization included) and httpx's info lines the
#: URLs of the auth layer's calls, so below ``trace`` secrets never reach the log
LIBRARY_LOGGERS = ("quic", "aioquic", "hpack", "h2", "hypercorn", "httpx", "httpcore")
