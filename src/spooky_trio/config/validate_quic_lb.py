"""Rules of ``quic_lb`` (config/schema_quic_lb.py): the draft's limits on the server ID and
nonce lengths, the config rotation codepoint, room for the worker index, the key file."""

from __future__ import annotations

import string

from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_quic_lb import QuicLbConfig, read_quic_lb_key

#: workers whose index fits the first octet's five bits (docs/fleet.md)
_FIRST_OCTET_WORKERS = 32


def _listeners(config: Config) -> list[tuple[KeyPath, QuicLbConfig]]:
    base: KeyPath = ("listeners",) if config.listeners else ("listen",)
    out = []
    for index, listener in enumerate(config.effective_listeners()):
        if listener.quic_lb is not None:
            path = base + (index,) if config.listeners else base
            out.append((path + ("quic_lb",), listener.quic_lb))
    return out


def validate_quic_lb(out: Problems, config: Config) -> None:
    """Add the problems of every effective listener's ``quic_lb``."""
    workers = config.performance.worker_threads
    for path, lb in _listeners(config):
        out.between(path + ("config_id",), lb.config_id, 0, 6)
        text = lb.server_id.strip()
        digits = text[2:] if text.lower().startswith("0x") else text
        sid_length = len(digits) // 2
        if not digits or len(digits) % 2 or any(c not in string.hexdigits for c in digits):
            out.add(path + ("server_id",), f"must be a server ID in hex, whole octets, e.g. '0x31441a' (got {lb.server_id!r})")
            continue
        out.at_least(path + ("nonce_length",), lb.nonce_length, 4)
        appended = lb.self_encode_length and workers > 1
        room = 18 if appended else 19
        if sid_length + lb.nonce_length > room:
            why = " (one octet of 19 holds the worker index when self_encode_length is on with workers)" if appended else ""
            out.add(path + ("nonce_length",), f"server_id ({sid_length} octets) and nonce_length must sum to {room} or less{why}",
                    path + ("server_id",))
        if not lb.self_encode_length and workers > _FIRST_OCTET_WORKERS:
            out.add(path + ("self_encode_length",), f"with more than {_FIRST_OCTET_WORKERS} workers the worker index needs its "
                    "own octet: set self_encode_length: true", ("performance", "worker_threads"))


def check_quic_lb_files(config: Config) -> list[ConfigIssue]:
    """The key files: readable, one AES-128 key each (the message never holds the key)."""
    positions = PositionMap(config.source_positions)
    issues = []
    for path, lb in _listeners(config):
        if lb.key_file is not None:
            try:
                read_quic_lb_key(lb.key_file)
            except ValueError as exc:
                issues.append(positions.issue(path + ("key_file",), str(exc)))
    return issues
