"""Smoke test of the benchmark harness: the real ``python -m bench.run`` against the real proxy
process, a few hundred requests, no Caddy. Checks the table and the JSON are well formed and
the run had no errors; no timing assertions (timing goals live in the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import add_ratios, percentile, render_table, target_src
from bench.targets import REPO, python_env


def test_bench_run_tiny_and_idle(tmp_path):
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1,idle_1000", "-t", "spooky", "-n", "300", "-p", "1",
         "--idle-connections", "12", "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU s/1k req" in proc.stdout and "peak RSS MB" in proc.stdout
    result = json.loads(out_json.read_text())
    assert result["skipped"] == [] or all("caddy" in s or "h2load" in s for s in result["skipped"])
    tiny, idle = result["rows"]
    assert (tiny["scenario"], tiny["target"]) == ("tiny_h1", "spooky")
    assert tiny["errors"] == 0 and tiny["error_samples"] == []
    assert tiny["requests"] >= 300
    assert tiny["cpu_s"] > 0 and tiny["cpu_s_per_1k"] > 0  # /proc was read for the proxy process
    assert tiny["peak_rss_mb"] > 0
    assert 0 < tiny["p50_ms"] <= tiny["p99_ms"] <= tiny["max_ms"]
    table_row = next(line for line in proc.stdout.splitlines() if line.startswith("tiny_h1"))
    assert table_row.split()[:3] == ["tiny_h1", "spooky", "1"]
    assert (idle["scenario"], idle["errors"], idle["connections"]) == ("idle_1000", 0, 12)
    assert "rss_per_connection_kib" in idle


def test_bench_open_loop_rate(tmp_path):
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky", "-n", "150", "-p", "1", "--rate", "100",
         "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out_json.read_text())["rows"]
    assert row["errors"] == 0 and row["offered_rate"] == 100
    assert row["requests"] + row["skipped"] == 150  # every scheduled request was sent or counted as skipped
    assert "open loop 100/s" in proc.stdout


def test_ratios_and_table():
    rows = [
        {"scenario": "tiny_h1", "target": "spooky", "run": 1, "requests": 10, "errors": 0, "rps": 200.0, "p50_ms": 1.0,
         "p99_ms": 2.0, "max_ms": 3.0, "cpu_s_per_1k": 0.9, "peak_rss_mb": 50.0},
        {"scenario": "tiny_h1", "target": "caddy", "run": 1, "requests": 10, "errors": 0, "rps": 400.0, "p50_ms": 1.0,
         "p99_ms": 2.0, "max_ms": 3.0, "cpu_s_per_1k": 0.6, "peak_rss_mb": 40.0},
    ]
    add_ratios(rows)
    assert rows[0]["cpu_ratio"] == 1.5 and rows[0]["rps_ratio"] == 0.5
    assert "cpu_ratio" not in rows[1]
    lines = render_table(rows).splitlines()
    assert len(lines) == 4 and lines[2].split()[10:12] == ["1.50", "0.50"]
    assert percentile([1, 2, 3, 4], 0.5) in (2.0, 3.0) and percentile([5], 0.99) == 5.0


def test_bench_workers_one_and_two(tmp_path):
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky", "-w", "1,2", "-n", "200", "-p", "1",
         "-c", "8", "-m", "2", "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = json.loads(out_json.read_text())["rows"]
    assert (one["target"], two["target"]) == ("spooky", "spooky-w2")
    assert one["errors"] == two["errors"] == 0 and two["requests"] >= 200
    assert two["rps_vs_one_worker"] == round(two["rps"] / one["rps"], 2)
    assert "x req/s of 1 worker" in proc.stdout


def test_bench_cprofile_measured_phase_only(tmp_path):
    """--cprofile profiles the proxy between the load's start and end (SIGUSR1/SIGUSR2 to
    bench/cprofile_run.py) and prints calls per request from the kept pstats file."""
    import pstats
    import re
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky", "-n", "200", "-p", "1", "--cprofile",
         "--json", str(tmp_path / "result.json")],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"cProfile tiny_h1 spooky: (\d+) requests, (\d+) Python calls per request.*; (\S+\.pstats)", proc.stderr)
    assert match, proc.stderr
    path = Path(match.group(3))
    try:
        assert int(match.group(1)) >= 200 and int(match.group(2)) > 100
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        served = sum(nc for (file, _line, func), (_cc, nc, *_rest) in stats.items()
                     if func == "_start_request" and file.endswith("quic_connection.py"))
        # the request tasks of the measured phase, not the warm-up's (2 per stream slot here)
        assert 200 <= served < 200 + 64, served
    finally:
        path.unlink(missing_ok=True)


def test_bench_cprofile_covers_the_h2load_run(tmp_path):
    """--cprofile also profiles the bootstrap_h2 row (h2load drives the TCP listener)."""
    import re
    from pathlib import Path

    from tests.support.tools import require

    require("h2load", "nghttp2-client")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "bootstrap_h2", "-t", "spooky", "-n", "300", "--cprofile",
         "--json", str(tmp_path / "result.json")],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"cProfile bootstrap_h2 spooky: (\d+) requests, (\d+) Python calls per request.*; (\S+\.pstats)", proc.stderr)
    assert match, proc.stderr
    Path(match.group(3)).unlink(missing_ok=True)
    assert int(match.group(1)) >= 300 and int(match.group(2)) > 100


def test_a_target_dir_is_a_src_directory_or_a_checkout_holding_one(tmp_path):
    """A checkout's root used to be taken as its src/: the child then imported this
    checkout's code through PYTHONPATH, and an A/B run compared it with itself."""
    assert target_src(str(REPO / "src")) == REPO / "src"
    assert target_src(str(REPO)) == REPO / "src"
    with pytest.raises(SystemExit, match="no spooky_trio package"):
        target_src(str(tmp_path))
def test_h1_exchange_ab_runs_each_target(tmp_path):
    """``python -m bench.h1_exchange``: one line per target with a positive CPU figure."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.h1_exchange", f"a={REPO / 'src'}", f"b={REPO / 'src'}", "-n", "200", "-c", "2", "-r", "1"],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a", "b"]
    assert all(float(line.split()[2]) > 0 for line in lines)


def test_bench_tracing_targets(tmp_path):
    """--tracing off,1: the spooky target untraced and traced at sample_ratio 1 in one run;
    the traced one exports every request's span to the bench's OTLP receiver."""
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky", "--tracing", "off,1", "-n", "200", "-p", "1",
         "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    off, traced = json.loads(out_json.read_text())["rows"]
    assert (off["target"], traced["target"]) == ("spooky", "spooky-t1")
    assert off["errors"] == traced["errors"] == 0
    assert traced["spans_exported"] >= 200 and "spans_exported" not in off
    assert traced["cpu_vs_untraced"] > 0 and "x CPU/req of spooky" in proc.stdout


def test_bench_auth_targets(tmp_path):
    """``-t spooky+api_key,spooky+jwt``: the load sends valid credentials (a refusal would be
    an error of the run), the JWT target's JWK Set server starts and stops with it."""
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky+api_key,spooky+jwt", "-n", "100", "-p", "1",
         "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["target"], r["errors"]) for r in rows] == [("spooky+api_key", 0), ("spooky+jwt", 0)]
    assert all(r["requests"] >= 100 for r in rows)


@pytest.mark.parametrize("mode", ["none", "headers", "matchers", "mirror"])
def test_traffic_targets_configs_load(tmp_path, mode):
    from bench.targets import TRAFFIC_HEADERS, SpookyServer
    from spooky_trio.config import load_config_text

    server = SpookyServer(tmp_path, tmp_path, name=f"spooky+tp-{mode}", traffic=mode)
    for origin in ("http://127.0.0.1:8080", "https://127.0.0.1:8443"):
        config = load_config_text(server.config_text(origin, 9999))
        policy = config.upstream["bench"].traffic_policy
        assert (policy is not None) == (mode in ("matchers", "mirror"))
        route = config.upstream["bench"].route
        assert route is not None and len(route.headers) == (3 if mode == "matchers" else 0)
        assert ("shadow" in config.upstream) == (mode == "mirror")
    assert server.request_headers == ([] if mode == "none" else TRAFFIC_HEADERS)


def test_bench_stack_target_and_half_saturation(tmp_path):
    """``-t spooky,spooky+stack --half-saturation``: the stack target (JWT + one local
    rate-limit rule + the no-op plugin) serves the load's credentials without errors and is
    compared with the plain row; the open loop runs at half the saturation found first."""
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "-s", "tiny_h1", "-t", "spooky,spooky+stack", "-n", "100", "-p", "1",
         "--half-saturation", "--json", str(out_json)],
        cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    plain, stack = result["rows"]
    assert (plain["target"], stack["target"]) == ("spooky", "spooky+stack")
    assert plain["errors"] == stack["errors"] == 0
    rate = result["half_saturation"]["tiny_h1"]
    assert rate > 0 and plain["offered_rate"] == stack["offered_rate"] == rate
    assert stack["cpu_vs_untraced"] > 0 and "x CPU/req of spooky" in proc.stdout
    assert "spooky saturation" in proc.stderr
