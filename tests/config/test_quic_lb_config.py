"""``listen.quic_lb`` / ``listeners[].quic_lb``: the draft's limits, room for the worker
index, the key file (read, never echoed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import check_files
from spooky_trio.config.schema_quic_lb import read_quic_lb_key
from tests.config.helpers import LISTEN, POOL, errors, load

KEY_HEX = "8f95f09245765f80256934e50c66207f"


def _text(block: str, extra: str = "") -> str:
    return LISTEN + f"  quic_lb: {block}\n" + POOL + extra


def test_a_valid_block_loads() -> None:
    lb = load(_text("{config_id: 2, server_id: '0x31441a', nonce_length: 5, self_encode_length: true}")).listen.quic_lb
    assert lb is not None and lb.server_id_bytes() == bytes.fromhex("31441a") and lb.config_id == 2


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ("{config_id: 7, server_id: '0a'}", "listen.quic_lb.config_id", "between 0 and 6"),
        ("{server_id: '0a0'}", "listen.quic_lb.server_id", "whole octets"),
        ("{server_id: 'zz'}", "listen.quic_lb.server_id", "in hex"),
        ("{server_id: '0a', nonce_length: 3}", "listen.quic_lb.nonce_length", ">= 4"),
        ("{server_id: '0a0b0c0d0e0f0a0b0c0d', nonce_length: 10}", "listen.quic_lb.nonce_length", "19 or less"),
        ("{nonce_length: 6}", "listen.quic_lb.server_id", "required"),
    ],
)
def test_limits(block: str, path: str, words: str) -> None:
    messages = {str(i.path): i.message for i in errors(_text(block))}
    assert any(words in m for p, m in messages.items() if p.startswith(path) or path in p), messages


def test_the_worker_index_needs_room() -> None:
    many = "performance: {worker_threads: 33}\n"
    messages = [i.message for i in errors(_text("{server_id: '0a'}", many))]
    assert any("self_encode_length: true" in m for m in messages), messages
    load(_text("{server_id: '0a', self_encode_length: true}", many))
    four = "performance: {worker_threads: 4}\n"
    messages = [i.message for i in errors(_text("{server_id: '0a0b0c0d0e0f0a0b0c0d', nonce_length: 9, self_encode_length: true}", four))]
    assert any("18 or less" in m for m in messages), messages


@pytest.mark.parametrize("content", [KEY_HEX + "\n", bytes.fromhex(KEY_HEX)])
def test_key_file_hex_or_raw(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "lb.key"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    assert read_quic_lb_key(str(path)) == bytes.fromhex(KEY_HEX)


def test_a_bad_key_file_is_reported_without_its_content(tmp_path: Path, certs_dir: Path) -> None:
    path = tmp_path / "lb.key"
    path.write_text(KEY_HEX[:-2] + "\n")  # 15 octets
    text = (f"listen:\n  tls: {{cert: {certs_dir / 'localhost.pem'}, key: {certs_dir / 'localhost.key'}}}\n"
            f"  quic_lb: {{server_id: '0a', key_file: {path}}}\n" + POOL)
    issues = check_files(load(text))
    assert [str(i.path) for i in issues] and "AES-128" in issues[0].message
    assert KEY_HEX[:8] not in str(issues[0])
