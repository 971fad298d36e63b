"""Metrics hooks and the scrape-time collector, without sockets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from spooky_trio.config import load_config_text
from spooky_trio.ingress.identities import IdentityStore, load_identity
from spooky_trio.observability.metrics import Metrics, status_class
from spooky_trio.core.state import StateStore


def values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_status_class() -> None:
    assert status_class(204) == "2xx" and status_class(503) == "5xx" and status_class(None) == "none"


def test_event_hooks() -> None:
    m = Metrics()
    m.request_done(200, "ok")
    m.request_done(404, "test")
    m.request_done(None, "test")
    m.request_rejected(400)
    m.request_rejected(405)
    m.backend_exchange("p", "b", 502, None, 12.0)
    m.backend_exchange("p", "b", None, "timeout", None)
    m.health_probe(None)
    m.health_probe("5xx")
    m.dns_refresh(True, True)
    m.dns_refresh(False, False)
    v = values(m)
    assert v[("spooky_requests_total", ())] == 3
    assert v[("spooky_requests_success_total", ())] == 1
    assert v[("spooky_requests_failure_total", ())] == 2
    assert v[("spooky_request_validation_rejects_total", ())] == 1
    assert v[("spooky_policy_denied_total", ())] == 1
    assert v[("spooky_upstream_requests_total", (("outcome", "failure"), ("status_class", "5xx"), ("upstream", "p")))] == 1
    assert v[("spooky_upstream_requests_total", (("outcome", "failure"), ("status_class", "none"), ("upstream", "p")))] == 1
    assert v[("spooky_backend_timeouts_total", ())] == 1
    assert v[("spooky_health_failures_total", (("reason", "5xx"),))] == 2
    assert v[("spooky_health_failures_total", (("reason", "timeout"),))] == 1
    assert v[("spooky_health_checks_total", ())] == 2
    assert v[("spooky_health_checks_failure_total", ())] == 1
    assert v[("spooky_backend_dns_refresh_success_total", ())] == 1
    assert v[("spooky_backend_dns_refresh_failure_total", ())] == 1
    assert v[("spooky_backend_dns_address_set_changes_total", ())] == 1


def test_two_servers_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.request_done(200, "ok")
    assert values(b)[("spooky_requests_total", ())] == 0


def test_collector_reads_listener_and_tls_stats(certs_dir: Path) -> None:
    identity = load_identity(str(certs_dir / "localhost.pem"), str(certs_dir / "localhost.key"))
    quic = SimpleNamespace(address="127.0.0.1", port=8443, identities=IdentityStore(identity, []), connections={1, 2},
                           stats=Counter(datagrams=7, cap_rejects=1, panics=0, bad_headers=2, unroutable=3, refused_draining=4,
                                         handshake_success=5, handshake_failure=2, rate_limited=6, retry_validated=2,
                                         steered=8, handed_over=1), steering_mode="kernel")
    tls = SimpleNamespace(stats=Counter({"alpn.h2": 3, "alpn.http/1.1": 1, "sni.default": 4, "handshake_failed.missing": 2,
                                         "handshake_failed.timeout": 1}))
    tcp = SimpleNamespace(address="127.0.0.1", port=8443, open_connections=1, stats=Counter(cap_rejects=2), tls=tls)
    config = load_config_text("listen: {tls: {cert: /c.pem, key: /k.pem}}\nupstream: {app: {route: {path_prefix: /}, "
                              "backends: [{id: a, address: 'http://127.0.0.1:1'}]}}\nperformance: {global_inflight_limit: 100}\n"
                              "resilience: {adaptive_admission: {min_limit: 10}}\n")
    server = SimpleNamespace(listeners=[quic], bootstrap_listeners=[tcp], activity=SimpleNamespace(count=5),
                             generation=SimpleNamespace(number=3, pools={}, config=config), state=StateStore())
    server.state.resilience.admission.observe(1000.0, config.resilience.adaptive_admission)  # a slow sample: 100 -> 84
    m = Metrics()
    m.attach(server)
    v = values(m)
    assert v[("spooky_active_connections", ())] == 3
    assert v[("spooky_connection_cap_rejects_total", ())] == 3
    assert v[("spooky_ingress_packets_total", ())] == 7
    assert v[("spooky_ingress_unroutable_total", ())] == 3
    assert v[("spooky_ingress_draining_drops_total", ())] == 4
    assert v[("spooky_ingress_rate_limited_total", ())] == 6
    assert v[("spooky_ingress_retry_validated_total", ())] == 2
    assert v[("spooky_ingress_retry_invalid_token_total", ())] == 0
    assert v[("spooky_inflight_requests", ())] == 5
    assert v[("spooky_config_generation", ())] == 3
    assert v[("spooky_adaptive_admission_limit", ())] == 84
    assert v[("spooky_brownout_active", ())] == 0
    assert v[("spooky_quic_steering_packets_total", (("path", "steered"),))] == 8
    assert v[("spooky_quic_steering_packets_total", (("path", "handed_over"),))] == 1
    assert v[("spooky_quic_steering_mode", (("listener", "127.0.0.1:8443"), ("mode", "kernel")))] == 1
    assert v[("spooky_downstream_tls_handshake_success_total", ())] == 4 + 5  # TCP + QUIC
    cert = (("listener", "127.0.0.1:8443"), ("server_name", "default"))
    assert v[("spooky_downstream_tls_certificate_not_after_seconds", cert)] == identity.certificate.not_valid_after_utc.timestamp()
    assert v[("spooky_downstream_tls_certificate_days_remaining", cert)] > 1
    lst = ("listener", "127.0.0.1:8443")
    assert v[("spooky_downstream_tls_handshake_failure_total", (lst, ("reason", "missing_client_cert")))] == 2
    assert v[("spooky_downstream_tls_handshake_failure_total", (lst, ("reason", "handshake")))] == 1 + 2  # TCP timeout + QUIC
    assert v[("spooky_downstream_tls_alpn_total", (lst, ("protocol", "h2")))] == 3
    assert v[("spooky_downstream_tls_certificate_selection_total", (lst, ("selection", "default")))] == 4
