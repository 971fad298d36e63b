"""Command line: ``spooky-trio [run] --config FILE``, ``check``, ``request``.

Every command prints one-line errors (never a traceback) and exits non-zero on failure;
output cut short by its reader (``spooky-trio --help | head -1``) ends quietly.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from spooky_trio import __version__

if TYPE_CHECKING:  # the config package is imported when a command needs it (a fast --help)
    from spooky_trio.config import Config
    from spooky_trio.config.schema import LogFormat, LogLevel

DEFAULT_CONFIG = "/etc/spooky/config.yaml"


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    return parser


def _log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``: override ``log.level`` / ``log.format`` of the
    config file, for this start and every reload of it."""
    from spooky_trio.config.schema import LogLevel
    from spooky_trio.config.spellings import SPELLINGS

    levels = ["off", "error", "warn", "info", "debug", "trace"]
    parser.add_argument("--log-level", type=str.lower, choices=levels + sorted(SPELLINGS[LogLevel].aliases), metavar="LEVEL",
                        help=f"override log.level ({', '.join(levels)}, or Spooky's names)")
    parser.add_argument("--log-format", choices=("plain", "json"), help="override log.format")


def _log_override(args: argparse.Namespace) -> Callable[[Config], Config] | None:
    """The function that applies ``args``' log options to a config (None without any)."""
    if args.log_level is None and args.log_format is None:
        return None
    import attrs

    from spooky_trio.config.schema import LogLevel
    from spooky_trio.config.spellings import canonical

    level = None if args.log_level is None else cast("LogLevel", canonical(LogLevel, args.log_level))
    log_format = cast("LogFormat | None", args.log_format)

    def override(config: Config) -> Config:
        log = config.log
        if level is not None:
            log = attrs.evolve(log, level=level)
        if log_format is not None:
            log = attrs.evolve(log, format=log_format)
        return attrs.evolve(config, log=log)

    return override


def _log_argv(args: argparse.Namespace) -> list[str]:
    """``args``' log options as arguments again (the supervisor passes them to its workers)."""
    out = []
    if args.log_level is not None:
        out += ["--log-level", args.log_level]
    if args.log_format is not None:
        out += ["--log-format", args.log_format]
    return out


def _load(path: str):  # type: ignore[no-untyped-def]
    """Load and fully check a config; print every problem and return None on failure."""
    from spooky_trio.config import ConfigError, check_files, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{path}: {issue}", file=sys.stderr)
        return None
    problems = check_files(config)
    for issue in problems:
        print(f"{path}: {issue}", file=sys.stderr)
    return None if problems else config


def _warnings(config) -> list[str]:  # type: ignore[no-untyped-def]
    """The config's warnings (accepted, as Spooky accepts them, but probably not meant)."""
    from spooky_trio.config import config_warnings

    return [str(issue) for issue in config_warnings(config)]


def _not_portable(path: str, config) -> list[str]:  # type: ignore[no-untyped-def]
    """What in the loaded ``config`` (from ``path``) Spooky would not accept."""
    from spooky_trio.config import ConfigError
    from spooky_trio.config.portability import spooky_strict_issues

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return [str(issue) for issue in spooky_strict_issues(config, text, source=path)]
    except (OSError, UnicodeDecodeError, ConfigError) as exc:  # the file changed under us
        return [f"cannot read {path} again: {exc}"]


def cmd_check(argv: list[str]) -> int:
    parser = _config_parser("spooky-trio check", "Validate a configuration file and the files it names.")
    parser.add_argument(
        "--spooky-strict",
        action="store_true",
        help="also report, one line each, everything Spooky would not accept (our extension keys and "
        "spellings, rules we relax); exit 1 if there is any",
    )
    args = parser.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
    for warning in _warnings(config):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    from spooky_trio.config.describe_traffic import describe_traffic

    for pool, lines in describe_traffic(config).items():  # each pool's traffic policy in words
        for line in lines:
            print(f"pool {pool}: {line}")
    if args.spooky_strict:
        findings = _not_portable(args.config, config)
        for finding in findings:
            print(f"{args.config}: not for Spooky: {finding}", file=sys.stderr)
        if findings:
            return 1
    print("config OK")
    return 0


def _ignore_sighup_until_served() -> None:
    """SIGHUP's default action ends the process: until the server installs its reload
    handler (which restores this disposition when it stops), a reload asked while the
    process starts (``systemctl reload`` right after ``start``) is ignored instead of
    killing it. (A file changed during that second is applied by the next reload.)"""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def cmd_run(argv: list[str]) -> int:
    _ignore_sighup_until_served()
    parser = _config_parser("spooky-trio run", "Run the proxy.")
    _log_options(parser)
    args = parser.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
    override = _log_override(args)
    if override is not None:
        config = override(config)
    import trio

    from spooky_trio.observability.logging import configure_logging
    from spooky_trio.serving.exits import EXIT_FORCED, EXIT_RESTART, StartupError
    from spooky_trio.serving.server import Server

    try:
        configure_logging(config.log)
    except OSError as exc:
        print(f"spooky-trio: cannot open log file: {exc}", file=sys.stderr)
        return 1
    import logging

    for warning in _warnings(config):  # once per start (workers do not repeat them)
        logging.getLogger("spooky.config").warning("config warning: %s", warning)
    if config.performance.worker_threads > 1:
        return _run_supervisor(config, args.config, _log_argv(args))
    from spooky_trio.serving.heap import freeze_startup_heap

    freeze_startup_heap()  # full collections stop walking what never dies (serving/heap.py)
    try:
        server = Server(config, config_path=args.config, adapt_config=override)
        trio.run(server.run)
    except StartupError as exc:
        print(f"spooky-trio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before the handler was installed
        return EXIT_FORCED
    if server.forced:
        return EXIT_FORCED
    return EXIT_RESTART if server.restart_requested else 0


def _run_supervisor(config, path: str, worker_args: list[str]) -> int:  # type: ignore[no-untyped-def]
    """``worker_threads > 1``: this process supervises worker processes (serving/workers.py)."""
    import trio

    from spooky_trio.serving.exits import EXIT_FORCED, EXIT_RESTART, StartupError
    from spooky_trio.serving.workers import Supervisor

    try:
        supervisor = Supervisor(config, path, worker_args=worker_args)
        trio.run(supervisor.run)
    except StartupError as exc:
        print(f"spooky-trio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_FORCED
    if supervisor.forced or supervisor.unclean_exit:
        return EXIT_FORCED
    return EXIT_RESTART if supervisor.restart_requested else 0


def cmd_worker(argv: list[str]) -> int:
    """Hidden: one worker process under ``spooky-trio run`` (serving/workers.py)."""
    _ignore_sighup_until_served()
    parser = _config_parser("spooky-trio worker", "One worker process (started by the supervisor).")
    parser.add_argument("--worker-index", type=int, required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, default=None)
    _log_options(parser)
    args = parser.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
    override = _log_override(args)
    if override is not None:
        config = override(config)
    from spooky_trio.observability.logging import configure_logging
    from spooky_trio.serving.worker import run_worker

    try:
        configure_logging(config.log)
    except OSError as exc:
        print(f"spooky-trio worker: cannot open log file: {exc}", file=sys.stderr)
        return 1
    return run_worker(config, args.config, args.worker_index, args.report_fd, args.lifeline_fd, override)


def cmd_request(argv: list[str]) -> int:
    from spooky_trio.clients.request_cmd import main as request_main

    return request_main(argv)


#: name -> (function, one line for ``--help``); ``worker`` is internal (the supervisor's)
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (cmd_run, "serve with a config file (the default command: `spooky-trio --config FILE`)"),
    "check": (cmd_check, "validate a config file and the files it names, print every problem"),
    "request": (cmd_request, "send one HTTP/3, HTTP/2 or HTTP/1.1 request and print the response"),
}
INTERNAL_COMMANDS: dict[str, Callable[[list[str]], int]] = {"worker": cmd_worker}


def usage() -> str:
    """The top-level ``--help``: every command with one line, and the global options."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: spooky-trio [COMMAND] [OPTIONS]",
        "",
        "An HTTP/3-first edge reverse proxy; its configuration is Spooky's YAML schema.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this help; `spooky-trio COMMAND --help` shows a command's options",
        "  -V, --version  print the version and exit",
        "",
        "Without a command, the options are run's: `spooky-trio --config FILE` runs the proxy,",
        "as Spooky does (default config " + DEFAULT_CONFIG + ").",
    ]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("-V", "--version"):
        print(f"spooky-trio {__version__}")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    if argv and argv[0] in INTERNAL_COMMANDS:
        return INTERNAL_COMMANDS[argv[0]](argv[1:])
    if argv and not argv[0].startswith("-"):
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"spooky-trio: unknown command '{argv[0]}'{hint}; commands: {', '.join(COMMANDS)} (spooky-trio --help)",
              file=sys.stderr)
        return 2
    return cmd_run(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``spooky-trio`` entry point; returns the exit status."""
    try:
        try:
            status = _dispatch(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as stop:  # argparse: a command's --help, a usage error
            status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return status
    except BrokenPipeError:
        # the reader went away (`spooky-trio --help | head -1`): stop quietly like other
        # tools; stdout goes to /dev/null so the interpreter's final flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
