"""``listen.quic_lb`` / ``listeners[].quic_lb`` (ext): QUIC-LB connection IDs
(draft-ietf-quic-load-balancers), so that an L4 balancer in front of many nodes routes a
connection by its CID whatever the client's address (docs/fleet.md).

The key file is read at load and at every reload (:func:`read_quic_lb_key`); its content is
never part of the config object, a log line, a metric or ``/admin/runtime``.
"""

from __future__ import annotations

import attrs

from spooky_trio.config.markers import EXT
from spooky_trio.config.normalize import empty_to_none


@attrs.frozen(kw_only=True)
class QuicLbConfig:
    """One node's QUIC-LB configuration: its ``server_id`` (hex) under config rotation
    codepoint ``config_id``; ``key_file`` (AES-128) makes the CIDs encrypted."""

    config_id: int = attrs.field(default=0, metadata=EXT)
    server_id: str = attrs.field(metadata=EXT)
    nonce_length: int = attrs.field(default=8, metadata=EXT)
    key_file: str | None = attrs.field(default=None, converter=empty_to_none, metadata=EXT)
    self_encode_length: bool = attrs.field(default=False, metadata=EXT)

    def server_id_bytes(self) -> bytes:
        """``server_id`` as octets (validated: hex digits, an optional ``0x``)."""
        text = self.server_id.strip()
        return bytes.fromhex(text[2:] if text.lower().startswith("0x") else text)


def read_quic_lb_key(path: str) -> bytes:
    """The 16-octet key in ``path``: 32 hex digits (whitespace ignored) or 16 raw octets.
    Raises ``ValueError`` saying why it cannot be used; the message never holds the key."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(4096)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    text = b"".join(data.split())
    if len(text) == 32:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) == 16:
        return data
    raise ValueError(f"{path} must hold an AES-128 key: 32 hex digits or 16 raw octets")
