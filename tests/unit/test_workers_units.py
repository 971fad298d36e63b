"""Pieces of serving/workers.py that need no processes: the metrics merge and the worker's
config (its observability section replaced)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from spooky_trio.config import load_config_text
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.supervisor_metrics import merge_expositions
from spooky_trio.serving.worker import INTERNAL, worker_config
from tests.support.proxy import h1_pool, proxy_yaml


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_merge_sums_counters_and_histograms_and_takes_min_of_other_gauges() -> None:
    one, two = Metrics(), Metrics()
    for _ in range(3):
        one.request_done(200, "ok")
    two.request_done(200, "ok")
    two.request_done(502, "test")
    one.backend_exchange("app", "a", 200, None, 3.0)
    two.backend_exchange("app", "a", 200, None, 30.0)
    two.backend_exchange("app", "b", 503, None, 7.0)
    extra_one = ("# HELP spooky_config_generation g\n# TYPE spooky_config_generation gauge\nspooky_config_generation 3.0\n"
                 "# HELP spooky_inflight_requests i\n# TYPE spooky_inflight_requests gauge\nspooky_inflight_requests 4.0\n"
                 "# HELP spooky_brownout_active b\n# TYPE spooky_brownout_active gauge\nspooky_brownout_active 0.0\n")
    extra_two = extra_one.replace("generation 3.0", "generation 1.0").replace("requests 4.0", "requests 5.0").replace(
        "active 0.0", "active 1.0")
    merged = samples(merge_expositions([one.render().decode() + extra_one, two.render().decode() + extra_two]))
    assert merged[("spooky_requests_total", ())] == 5
    assert merged[("spooky_requests_success_total", ())] == 4
    assert merged[("spooky_requests_failure_total", ())] == 1
    ok = (("outcome", "success"), ("status_class", "2xx"), ("upstream", "app"))
    assert merged[("spooky_upstream_requests_total", ok)] == 2
    assert merged[("spooky_upstream_requests_total", (("outcome", "failure"), ("status_class", "5xx"), ("upstream", "app")))] == 1
    bucket = ("spooky_upstream_request_latency_ms_bucket", (("le", "5.0"), ("outcome", "success"), ("upstream", "app")))
    assert merged[bucket] == 1  # 3 ms from the first worker only
    assert merged[("spooky_upstream_request_latency_ms_count", (("outcome", "success"), ("upstream", "app")))] == 2
    assert merged[("spooky_upstream_request_latency_ms_sum", (("outcome", "success"), ("upstream", "app")))] == 33.0
    assert merged[("spooky_config_generation", ())] == 1  # min: the lagging worker shows
    assert merged[("spooky_inflight_requests", ())] == 9  # summed gauge
    assert merged[("spooky_brownout_active", ())] == 1  # max
    created = [key for key in merged if key[0] == "spooky_requests_created"]
    assert created and merged[created[0]] <= samples(one.render())[created[0]]


def test_merge_of_rate_limit_gauges() -> None:
    def worker(buckets: int, fallback: int) -> str:
        return (f"# HELP spooky_rate_limit_buckets b\n# TYPE spooky_rate_limit_buckets gauge\n"
                f'spooky_rate_limit_buckets{{rule="r"}} {buckets}.0\n'
                f"# HELP spooky_rate_limit_store_fallback_active f\n# TYPE spooky_rate_limit_store_fallback_active gauge\n"
                f'spooky_rate_limit_store_fallback_active{{store="s"}} {fallback}.0\n')

    merged = samples(merge_expositions([worker(3, 0), worker(4, 1)]))
    assert merged[("spooky_rate_limit_buckets", (("rule", "r"),))] == 7  # buckets held by all workers
    assert merged[("spooky_rate_limit_store_fallback_active", (("store", "s"),))] == 1  # one worker falling back shows


def test_merge_of_nothing_is_empty() -> None:
    assert merge_expositions([]) == b""


def test_worker_config_replaces_only_observability_endpoints(certs_dir: Path) -> None:
    text = proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra="""
performance:
  worker_threads: 2
observability:
  metrics:
    enabled: true
    port: 9911
  control_api:
    enabled: true
    port: 9912
    reload_path: /custom/reload
    auth_token: "operator"
""")
    config = load_config_text(text)
    adapted = worker_config(config, "private")
    control = adapted.observability.control_api
    assert adapted.observability.metrics.enabled is False
    assert (control.enabled, control.address, control.port, control.auth_token) == (True, "127.0.0.1", 0, "private")
    assert control.reload_path == INTERNAL.reload_path == "/admin/runtime/reload"  # the supervisor's fixed paths
    assert adapted.upstream == config.upstream and adapted.effective_listeners() == config.effective_listeners()
    assert adapted.performance == config.performance
    # idempotent: a reload adapts the re-read file the same way, so nothing "changes"
    assert worker_config(load_config_text(text), "private").observability == adapted.observability


def test_a_disabled_control_api_lends_the_workers_no_unchecked_value(certs_dir: Path) -> None:
    # a disabled control API's values are not validated (as Spooky), so its timeout may be 0:
    # the workers' private control API then keeps the default
    text = proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra="""
observability:
  control_api:
    connection_timeout_ms: 0
""")
    control = worker_config(load_config_text(text), "private").observability.control_api
    assert control.connection_timeout_ms == INTERNAL.connection_timeout_ms == 30000


def test_merge_drops_excluded_families_with_their_created_gauge() -> None:
    text = Metrics().render().decode()
    assert "spooky_control_api_connection_limit_drops_created" in text
    merged = merge_expositions([text, text], frozenset({"spooky_control_api_connection_limit_drops"})).decode()
    assert "spooky_control_api_connection_limit_drops" not in merged and "spooky_requests_total 0.0" in merged
