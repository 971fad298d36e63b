"""Command line: ``spooky-trio [run] --config FILE``, ``check``, ``request``."""

from __future__ import annotations

import argparse
import sys

from spooky_trio import __version__

DEFAULT_CONFIG = "/etc/spooky/config.yaml"


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    return parser


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
    if args.spooky_strict:
        findings = _not_portable(args.config, config)
        for finding in findings:
            print(f"{args.config}: not for Spooky: {finding}", file=sys.stderr)
        if findings:
            return 1
    print("config OK")
    return 0


def cmd_run(argv: list[str]) -> int:
    args = _config_parser("spooky-trio run", "Run the proxy.").parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
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
        return _run_supervisor(config, args.config)
    try:
        server = Server(config, config_path=args.config)
        trio.run(server.run)
    except StartupError as exc:
        print(f"spooky-trio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before the handler was installed
        return EXIT_FORCED
    if server.forced:
        return EXIT_FORCED
    return EXIT_RESTART if server.restart_requested else 0


def _run_supervisor(config, path: str) -> int:  # type: ignore[no-untyped-def]
    """``worker_threads > 1``: this process supervises worker processes (serving/workers.py)."""
    import trio

    from spooky_trio.serving.exits import EXIT_FORCED, EXIT_RESTART, StartupError
    from spooky_trio.serving.workers import Supervisor

    try:
        supervisor = Supervisor(config, path)
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
    parser = _config_parser("spooky-trio worker", "One worker process (started by the supervisor).")
    parser.add_argument("--worker-index", type=int, required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, default=None)
    args = parser.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
    from spooky_trio.observability.logging import configure_logging
    from spooky_trio.serving.worker import run_worker

    try:
        configure_logging(config.log)
    except OSError as exc:
        print(f"spooky-trio worker: cannot open log file: {exc}", file=sys.stderr)
        return 1
    return run_worker(config, args.config, args.worker_index, args.report_fd, args.lifeline_fd)


def cmd_request(argv: list[str]) -> int:
    from spooky_trio.clients.request_cmd import main as request_main

    return request_main(argv)


COMMANDS = {"run": cmd_run, "check": cmd_check, "request": cmd_request, "worker": cmd_worker}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(f"spooky-trio {__version__}")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: spooky-trio [run] [--config FILE]\n"
            "       spooky-trio check [--config FILE] [--spooky-strict]\n"
            "       spooky-trio request URL [-X METHOD] [-d DATA|@file] [-H 'k: v'] [--http 3|2|1.1] [--cacert FILE|-k] [-i]\n"
            "\n`spooky-trio --config FILE` runs the proxy, as Spooky does."
        )
        return 0
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return cmd_run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
