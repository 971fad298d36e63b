"""``observability.routing.header_name`` as the route step sends it (spooky-head.md section 6:
Spooky accepts any non-blank name when the header is exposed, and never sends it; we send
it, trimmed and lower-cased, when it is an HTTP token, and never an invalid one)."""

from __future__ import annotations

import pytest

from tests.proxy.fakes import RecordingSink, build, ok, request


@pytest.mark.parametrize(
    ("routing", "sent"),
    [
        ("{enabled: true, expose_header: true}", b"x-spooky-route-decision"),
        ("{enabled: true, expose_header: true, header_name: ' X-Route '}", b"x-route"),
        ("{enabled: true, expose_header: true, header_name: 'x route'}", None),  # accepted (a warning), not sent
        ("{enabled: true, expose_header: false, header_name: ' '}", None),
    ],
)
async def test_the_decision_header_name(routing: str, sent: bytes | None) -> None:
    proxy, *_ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=f"observability:\n  routing: {routing}\n")
    sink = RecordingSink()
    await proxy.handle(request(b"/x"), sink)
    assert sink.status == 200
    decisions = [(name, value) for name, value in sink.headers if b"route" in name]
    assert decisions == ([] if sent is None else [(sent, b'pool=app; reason="only match"')])
