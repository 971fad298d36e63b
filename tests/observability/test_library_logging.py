"""observability/logging.py: hpack's per-field debug calls cost nothing below trace, and its
lines still appear at trace."""

from __future__ import annotations

import logging

import hpack
import hpack.hpack
import pytest

from spooky_trio.config import LogConfig
from spooky_trio.config.schema import LogLevel
from spooky_trio.observability.logging import install_handler, quiet_hpack


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("hpack").setLevel(logging.NOTSET)
    quiet_hpack(False)


def _records_of_one_header_block(level: LogLevel) -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    install_handler(Keep(), LogConfig(level=level))
    block = hpack.Encoder().encode([(b":status", b"200"), (b"x-secret", b"s3cret")])
    assert hpack.Decoder().decode(block, raw=True) == [(b":status", b"200"), (b"x-secret", b"s3cret")]
    return [r for r in records if r.name.startswith("hpack")]


def test_below_trace_hpack_debug_is_one_no_op_call() -> None:
    assert _records_of_one_header_block("debug") == []
    assert not isinstance(hpack.hpack.log, logging.Logger)  # the stand-in, not Logger.debug


def test_at_trace_hpack_logs_again() -> None:
    records = _records_of_one_header_block("trace")
    assert hpack.hpack.log is logging.getLogger("hpack.hpack")
    assert any("Encoding" in r.getMessage() or "Encoded" in r.getMessage() for r in records)


def test_other_levels_reach_the_real_logger(caplog: pytest.LogCaptureFixture) -> None:
    quiet_hpack(True)
    with caplog.at_level(logging.WARNING, logger="hpack.hpack"):
        hpack.hpack.log.warning("kept %s", "yes")
    assert [r.getMessage() for r in caplog.records if r.name == "hpack.hpack"] == ["kept yes"]
