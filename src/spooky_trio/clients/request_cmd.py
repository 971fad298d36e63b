"""``spooky-trio request``: a curl-like one-shot HTTP client for operators.

HTTP/3 (default) uses :class:`~spooky_trio.clients.h3.H3Client`; ``--http 2`` and
``--http 1.1`` use TLS over TCP via :mod:`spooky_trio.clients.tcp`. The exit status is 0
for any HTTP response (like curl) and 1, with a one-line message on stderr, when no
response could be obtained (resolution, connection, TLS, reset, timeout). Library log
records (aioquic logs a failed handshake at ERROR) are not printed: the one-line error says
what failed; ``-v`` prints them, with their debug records.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import BinaryIO
from urllib.parse import urlsplit

import trio

from spooky_trio.clients.errors import ClientError
from spooky_trio.clients.h3 import H3Client
from spooky_trio.clients.tcp import Headers, fetch

PROG = "spooky-trio request"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description="Send one HTTP request (HTTP/3 by default) and print the response.")
    p.add_argument("url", metavar="URL", help="https://host[:port]/path (http:// only with --http 2 or 1.1)")
    p.add_argument("-X", "--request", dest="method", metavar="METHOD", help="request method (default GET, or POST with -d)")
    p.add_argument("-d", "--data", metavar="DATA", help="request body; @FILE reads a file, @- standard input")
    p.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    p.add_argument("--http", choices=("3", "2", "1.1"), default="3", help="HTTP version (default 3)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--cacert", metavar="FILE", help="PEM file of CA certificates to trust instead of the system store")
    trust.add_argument("-k", "--insecure", action="store_true", help="do not verify the server certificate")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers (and trailers) too")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="overall time limit (default 30)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE instead of standard output")
    p.add_argument("-v", "--verbose", action="store_true", help="print the protocol libraries' log records (aioquic, h2) on stderr")
    return p


def library_logs(verbose: bool) -> None:
    """Where the libraries' log records go: with ``verbose``, to stderr with their debug
    records; otherwise nowhere. Without a handler, Python's last-resort handler would print
    their warnings and errors (aioquic's own line about a failed certificate check) before
    our one-line error. A process that configured logging already keeps its handlers."""
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="* %(name)s %(levelname)s: %(message)s")
    elif not root.handlers:
        root.addHandler(logging.NullHandler())


class UsageError(Exception):
    """An argument that parsed but cannot be used (bad header, unreadable data file, ...)."""


class Printer:
    """Writes the response as it arrives: optional head to ``out``, body to ``out`` or ``-o``."""

    def __init__(self, out: BinaryIO, include: bool, output: str | None) -> None:
        self._out = out
        self._include = include
        self._output = output
        self._body: BinaryIO | None = None
        self._last = b"\n"

    def start(self, http_version: str, status: int, headers: Headers) -> None:
        if self._include:
            lines = [f"HTTP/{http_version} {status}".encode("ascii")] + [k + b": " + v for k, v in headers]
            self._out.write(b"\n".join(lines) + b"\n\n")
        self._body = open(self._output, "wb") if self._output else self._out  # noqa: SIM115 - closed in close()

    def data(self, chunk: bytes) -> None:
        assert self._body is not None
        if chunk:
            self._body.write(chunk)
            self._last = chunk[-1:]

    def end(self, trailers: Headers) -> None:
        if self._include and trailers:
            prefix = b"" if self._body is not self._out or self._last == b"\n" else b"\n"
            self._out.write(prefix + b"".join(k + b": " + v + b"\n" for k, v in trailers))

    def close(self) -> None:
        if self._body is not None and self._body is not self._out:
            self._body.close()
        self._out.flush()


def _parse_headers(raw: list[str]) -> list[tuple[str, str]]:
    headers = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"invalid header {item!r} (expected 'NAME: VALUE')")
        headers.append((name.strip(), value.strip()))
    return headers


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if not data.startswith("@"):
        return data.encode("utf-8")
    if data == "@-":
        return sys.stdin.buffer.read()
    try:
        with open(data[1:], "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {data[1:]}: {exc.strerror or exc}") from None


async def run(args: argparse.Namespace, out: BinaryIO | None = None) -> int:
    """Execute a parsed command line; returns the exit status (see the module docstring)."""
    if out is None:
        sys.stdout.flush()
        out = sys.stdout.buffer
    try:
        headers = _parse_headers(args.headers)
        body = _read_data(args.data)
        url = urlsplit(args.url)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise UsageError(f"unsupported URL {args.url!r} (expected https://host[:port]/path)")
        if url.scheme == "http" and args.http == "3":
            raise UsageError("HTTP/3 needs an https:// URL")
        port = url.port or (443 if url.scheme == "https" else 80)
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    method = args.method or ("POST" if body is not None else "GET")
    authority = url.netloc.rpartition("@")[2]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    printer = Printer(out, args.include, args.output)
    try:
        with trio.fail_after(args.timeout):
            if args.http == "3":
                await _h3(args, url.hostname, port, method, authority, path, headers, body, printer)
            else:
                await fetch(
                    method=method, scheme=url.scheme, host=url.hostname, port=port, authority=authority, path=path,
                    headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers], body=body,
                    http_version=args.http, sink=printer, cafile=args.cacert, verify=not args.insecure,
                )
    except trio.TooSlowError:
        return _fail(printer, f"timed out after {args.timeout:g}s")
    except ClientError as exc:
        return _fail(printer, str(exc))
    except OSError as exc:
        return _fail(printer, exc.strerror or str(exc))
    printer.close()
    return 0


def _fail(printer: Printer, message: str) -> int:
    printer.close()
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


async def _h3(args: argparse.Namespace, host: str, port: int, method: str, authority: str, path: str,
              headers: list[tuple[str, str]], body: bytes | None, printer: Printer) -> None:
    connect = H3Client.connect(
        host, port, cafile=args.cacert, verify=not args.insecure,
        connect_timeout=min(10.0, args.timeout), idle_timeout=max(5.0, min(30.0, args.timeout)),
    )
    async with connect as client:
        async with client.stream_request(method, path, headers=headers, body=body, authority=authority) as resp:
            if resp.status is None:
                raise ClientError("the server ended the stream without a response")
            printer.start("3", resp.status, resp.headers)
            while chunk := await resp.receive():
                printer.data(chunk)
            printer.end(resp.trailers)


def main(argv: list[str]) -> int:
    """Entry point for ``spooky-trio request ARGS``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    library_logs(args.verbose)
    try:
        return trio.run(run, args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
