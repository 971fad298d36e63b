"""Benchmark spooky-trio against Caddy in one invocation: ``python -m bench.run`` (``make bench``).

Per scenario and target: start the proxy with a generated config in a temporary directory,
drive it with N load-generator processes (bench/loadgen.py, HTTP/3 over aioquic) or h2load,
read the proxy's CPU time and memory from /proc around the measured phase, stop it.
Prints one table and writes the full results as JSON to bench/results/.

``BENCH_QUICK=1`` shortens everything (a smoke run, numbers not meaningful).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.auth import BenchAuth
from bench.plugins import BenchPlugin
from bench.targets import ONE_MIB, REPO, CaddyServer, Origin, RedisServer, SpookyServer, free_port, python_env

RESULTS = REPO / "bench" / "results"

#: name -> shape. ``connections`` and ``streams`` are totals over all load processes
#: (connections are split between processes; streams are per connection).
SCENARIOS: dict[str, dict[str, Any]] = {
    "tiny_h1": {"kind": "h3", "upstream": "h1", "method": "GET", "path": "/", "connections": 4, "streams": 8,
                "about": "tiny GET, HTTP/3 -> HTTP/1.1 origin"},
    "tiny_h2tls": {"kind": "h3", "upstream": "h2", "method": "GET", "path": "/", "connections": 4, "streams": 8,
                   "about": "tiny GET, HTTP/3 -> HTTP/2 over TLS origin"},
    "download_1m": {"kind": "h3", "upstream": "h1", "method": "GET", "path": "/bytes/1048576", "expect": ONE_MIB,
                    "connections": 4, "streams": 8, "timeout": 180, "warmup": 0, "about": "1 MiB GET, 32 concurrent, HTTP/3 -> HTTP/1.1"},
    "upload_1m": {"kind": "h3", "upstream": "h1", "method": "POST", "path": "/upload", "body": ONE_MIB,
                  "connections": 4, "streams": 2, "timeout": 180, "warmup": 0, "about": "1 MiB POST, 8 concurrent, HTTP/3 -> HTTP/1.1"},
    "idle_1000": {"kind": "idle", "upstream": "h1", "connections": 1000,
                  "about": "1000 idle QUIC connections: memory per connection"},
    "bootstrap_h2": {"kind": "h2load", "upstream": "h1", "path": "/", "connections": 4, "streams": 8,
                     "about": "tiny GET over the TCP bootstrap listener, HTTP/2 (h2load) -> HTTP/1.1"},
    "tiny_h3up": {"kind": "h3", "upstream": "h3", "method": "GET", "path": "/", "connections": 4, "streams": 8,
                  "about": "tiny GET, HTTP/3 -> HTTP/3 origin (upstream_protocol: h3; Caddy: transport versions 3)"},
    "download_1m_h3up": {"kind": "h3", "upstream": "h3", "method": "GET", "path": "/bytes/1048576", "expect": ONE_MIB,
                         "connections": 4, "streams": 8, "timeout": 180, "warmup": 0,
                         "about": "1 MiB GET, 32 concurrent, HTTP/3 -> HTTP/3 origin"},
}
#: scenarios measured only when named with -s (their origin is another process: Caddy or hypercorn)
OPTIONAL = {"tiny_h3up", "download_1m_h3up"}
DEFAULT_ORDER = [name for name in SCENARIOS if name not in OPTIONAL]


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[index])


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.certs = workdir / "certs"
        self._cprofile_out: Path | None = None
        self._pid = 0

    # --- load drivers -----------------------------------------------------------------

    def _loadgen_cmds(self, port: int, sc: dict[str, Any], mode: str, connections: int) -> list[list[str]]:
        a = self.args
        procs = max(1, min(a.procs, connections))
        cmds = []
        for i in range(procs):
            conns = connections // procs + (1 if i < connections % procs else 0)
            cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--cafile", str(self.certs / "ca.pem"),
                   "--mode", mode, "--connections", str(conns), "--streams", str(sc.get("streams", 1)),
                   "--method", sc.get("method", "GET"), "--path", sc.get("path", "/"),
                   "--body-bytes", str(sc.get("body", 0)), "--expect-bytes", str(sc.get("expect", -1)),
                   "--duration", str(a.duration if not a.requests else 0),
                   "--requests", str(-(-a.requests // procs) if a.requests else 0),
                   "--rate", str(a.rate / procs if a.rate else 0),
                   "--warmup", str(min(a.warmup, sc.get("warmup", a.warmup))), "--timeout", str(sc.get("timeout", 30))]
            for name, value in sc.get("headers", ()):
                cmd += ["--header", f"{name}:{value}"]
            cmds.append(cmd)
        return cmds

    def _drive_h3(self, pid: int, port: int, sc: dict[str, Any], mode: str, connections: int) -> dict[str, Any]:
        """Start the load processes, wait until all are connected (READY), then measure."""
        procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(), cwd=REPO, text=True)
                 for cmd in self._loadgen_cmds(port, sc, mode, connections)]
        try:
            rss_before = procstat.rss_bytes(pid)
            for p in procs:
                line = p.stdout.readline()  # type: ignore[union-attr]
                if line.strip() != "READY":
                    raise RuntimeError(f"load generator failed before READY (got {line!r})")
            rss_connected = procstat.rss_bytes(pid)
            self._pid = pid
            profiler = self._start_profiler(pid, sc)
            cpu0, t0 = procstat.cpu_times(pid), time.monotonic()
            for p in procs:
                p.stdin.write("GO\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            outputs = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
            cpu1, t1 = procstat.cpu_times(pid), time.monotonic()
            self._stop_profiler(profiler)
        finally:
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        latencies = sorted(v for o in outputs for v in o["latencies_us"])
        return {
            "requests": len(latencies),
            "errors": sum(o["errors"] for o in outputs),
            "error_samples": [s for o in outputs for s in o["error_samples"]][:5],
            "wall_s": t1 - t0,
            "cpu_s": sum(cpu1) - sum(cpu0),
            "cpu_sys_s": cpu1[1] - cpu0[1],
            "latencies_us": latencies,
            "connections": sum(o["connections"] for o in outputs),
            "skipped": sum(o.get("skipped", 0) for o in outputs),
            "rss_before": rss_before,
            "rss_connected": rss_connected,
        }

    def _drive_h2load(self, pid: int, port: int, sc: dict[str, Any]) -> dict[str, Any]:
        a = self.args
        url = f"https://127.0.0.1:{port}{sc['path']}"
        base = ["h2load", "-c", str(sc["connections"]), "-m", str(sc["streams"]), "-t", "1"]
        subprocess.run(base + ["-n", str(max(a.warmup * sc["connections"] * sc["streams"], 64)), url],
                       capture_output=True, check=False, timeout=120)
        log = self.workdir / f"h2load-{port}.log"
        amount = ["-n", str(a.requests)] if a.requests else ["-D", str(max(1, int(a.duration)))]
        self._pid = pid
        profiler = self._start_profiler(pid, sc)
        cpu0, t0 = procstat.cpu_times(pid), time.monotonic()
        out = subprocess.run(base + amount + ["--log-file", str(log), url], capture_output=True, text=True, check=False,
                             timeout=a.duration + 120)
        cpu1, t1 = procstat.cpu_times(pid), time.monotonic()
        self._stop_profiler(profiler)
        latencies, errors = [], 0
        for line in log.read_text().splitlines() if log.exists() else []:
            parts = line.split("\t")
            if len(parts) >= 3:
                if parts[1] == "200":
                    latencies.append(int(parts[2]))
                else:
                    errors += 1
        for line in out.stdout.splitlines():  # failed/errored/timeout requests never reach the log
            if line.startswith("requests:"):
                words = line.replace(",", "").split()
                for n, w in zip(words, words[1:]):
                    if w in ("failed", "errored", "timeout") and n.isdigit():
                        errors += int(n)
        if out.returncode != 0 and not latencies:
            errors += 1
        latencies.sort()
        return {"requests": len(latencies), "errors": errors, "error_samples": [out.stderr[-300:]] if out.returncode else [],
                "wall_s": t1 - t0, "cpu_s": sum(cpu1) - sum(cpu0), "cpu_sys_s": cpu1[1] - cpu0[1], "latencies_us": latencies}

    # --- profiling (py-spy on the proxy, measured phase only) ----------------------------

    def _start_profiler(self, pid: int, sc: dict[str, Any]) -> tuple[subprocess.Popen, Path] | None:
        if self._cprofile_out is not None:
            self._cprofile_out.unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)  # bench/cprofile_run.py: profile from here
            return None
        if not self.args.profile or self._profiling_target != "spooky":
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"profile-{sc['name']}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
        proc = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                 "--gil", "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let py-spy attach before the load starts
        return proc, out

    def _stop_profiler(self, profiler: tuple[subprocess.Popen, Path] | None) -> None:
        if self._cprofile_out is not None:
            os.kill(self._pid, signal.SIGUSR2)  # ... to here; the stats file appears when written
            deadline = time.monotonic() + 30
            while not self._cprofile_out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            return
        if profiler is None:
            return
        proc, out = profiler
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if out.exists():
            print(f"profile (collapsed stacks): {out}", file=sys.stderr)
            print(top_functions(out.read_text()), file=sys.stderr)

    # --- one measurement ----------------------------------------------------------------

    def measure(self, server: Any, origin: Origin, name: str, sc: dict[str, Any]) -> dict[str, Any]:
        port = free_port()
        sc = dict(sc, name=name)
        self._profiling_target = server.name
        self._cprofile_out = getattr(server, "cprofile_out", None)
        upstream = {"h2": origin.h2_url, "h3": origin.h3_url}.get(sc["upstream"], origin.h1_url)
        sc["headers"] = getattr(server, "request_headers", [])  # an auth target's credentials
        server.start(upstream, port, protocol=sc["upstream"])
        try:
            pid = server.pid
            if sc["kind"] == "h3":
                raw = self._drive_h3(pid, port, sc, "load", sc["connections"])
            elif sc["kind"] == "idle":
                raw = self._drive_h3(pid, port, sc, "idle", self.args.idle_connections)
            else:
                raw = self._drive_h2load(pid, port, sc)
            peak = procstat.peak_rss_bytes(pid)
        finally:
            server.stop()
        if self._cprofile_out is not None and self._cprofile_out.exists():
            RESULTS.mkdir(parents=True, exist_ok=True)
            kept = RESULTS / f"cprofile-{name}-{server.name}-{time.strftime('%Y%m%dT%H%M%S')}.pstats"
            shutil.move(str(self._cprofile_out), kept)
            print(cprofile_summary(kept, max(raw["requests"], 1), f"{name} {server.name}"), file=sys.stderr)
        lat = raw.pop("latencies_us")
        row: dict[str, Any] = {
            "scenario": name, "target": server.name, "requests": raw["requests"], "errors": raw["errors"],
            "error_samples": raw["error_samples"], "wall_s": round(raw["wall_s"], 3), "cpu_s": round(raw["cpu_s"], 3),
            "cpu_sys_s": round(raw["cpu_sys_s"], 3),
            "peak_rss_mb": round(peak / 1e6, 1),
        }
        if sc["kind"] == "idle":
            conns = raw["connections"]
            row["connections"] = conns
            row["rss_per_connection_kib"] = round((raw["rss_connected"] - raw["rss_before"]) / 1024 / max(conns, 1), 1)
            row["rss_connected_mb"] = round(raw["rss_connected"] / 1e6, 1)
        else:
            n = max(raw["requests"], 1)
            if self.args.rate and sc["kind"] == "h3":
                row["offered_rate"] = self.args.rate
                row["skipped"] = raw.get("skipped", 0)
            row.update({
                "rps": round(raw["requests"] / raw["wall_s"], 1) if raw["wall_s"] > 0 else 0.0,
                "p50_ms": round(percentile(lat, 0.50) / 1000, 2),
                "p99_ms": round(percentile(lat, 0.99) / 1000, 2),
                "max_ms": round((lat[-1] if lat else float("nan")) / 1000, 2),
                "cpu_s_per_1k": round(raw["cpu_s"] / n * 1000, 3),
            })
        return row


_LINE_NUMBER = re.compile(r":\d+\)$")


def cprofile_summary(path: Path, requests: int, title: str, limit: int = 30) -> str:
    """Python calls per request and the top functions by self time from a cProfile dump."""
    import pstats

    stats = pstats.Stats(str(path))
    rows = stats.stats  # type: ignore[attr-defined]
    total_calls = sum(v[1] for v in rows.values())
    total_time = sum(v[2] for v in rows.values()) or 1e-9
    lines = [f"cProfile {title}: {requests} requests, {total_calls / requests:.0f} Python calls per request,"
             f" {total_time / requests * 1e6:.0f} us profiled per request (profiler overhead included); {path}",
             f"{'self %':>7} {'us/req':>7} {'calls/req':>9}  function"]
    for (file, line, func), (_cc, nc, tt, _ct, _callers) in sorted(rows.items(), key=lambda kv: -kv[1][2])[:limit]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if file != "~" else "builtin"
        lines.append(f"{tt / total_time * 100:6.1f}% {tt / requests * 1e6:7.1f} {nc / requests:9.2f}  {func} ({where})")
    return "\n".join(lines)


def top_functions(collapsed: str, limit: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE_NUMBER.sub(")", f) for f in stack.split(";")]
        for frame in set(frames):
            incl_count[frame] = incl_count.get(frame, 0) + count
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; self%  incl%  function"]
    for frame, count in sorted(self_count.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"  {100 * count / total:5.1f}  {100 * incl_count[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "nan"
    return format(v, spec)


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ["scenario", "target", "run", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "CPU s/1k req",
              "peak RSS MB", "CPU x caddy", "req/s x caddy", "note"]
    lines = [header]
    for r in rows:
        note = ""
        if "rss_per_connection_kib" in r:
            note = f"{r['connections']:g} conns, {r['rss_per_connection_kib']:.1f} KiB/conn"
        elif "offered_rate" in r:
            note = f"open loop {r['offered_rate']:g}/s, {r['skipped']:g} skipped"
        if r.get("rps_vs_one_worker") is not None:
            note = (note + ", " if note else "") + f"{r['rps_vs_one_worker']:.2f}x req/s of 1 worker"
        if r.get("cpu_vs_no_rule") is not None:
            note = (note + ", " if note else "") + f"{r['cpu_vs_no_rule']:.3f}x CPU of no rule"
        if r.get("cpu_vs_untraced") is not None:
            note = (note + ", " if note else "") + f"{r['cpu_vs_untraced']:.3f}x CPU/req of spooky"
        if r.get("spans_exported") is not None:
            note = (note + ", " if note else "") + f"{r['spans_exported']:g} spans exported"
        lines.append([
            r["scenario"], r["target"], str(r.get("run", 1)), _fmt(r.get("rps"), ".0f"), _fmt(r.get("p50_ms"), ".2f"),
            _fmt(r.get("p99_ms"), ".2f"), _fmt(r.get("max_ms"), ".1f"), str(r["errors"]), _fmt(r.get("cpu_s_per_1k"), ".3f"),
            _fmt(r["peak_rss_mb"], ".1f"), _fmt(r.get("cpu_ratio"), ".2f"), _fmt(r.get("rps_ratio"), ".2f"), note,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if i in (0, 1, 12) else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """spooky / caddy per scenario and run: CPU per request, requests/s, RSS per connection;
    spooky-wN / spooky (one worker): requests/s; spooky-tR / spooky (tracing off) and spooky+rl-MODE /
    spooky (no rule): CPU per request."""
    single = {(r["scenario"], r.get("run", 1)): r for r in rows if r["target"] == "spooky"}
    for r in rows:
        one = single.get((r["scenario"], r.get("run", 1)))
        if r["target"].startswith("spooky-w") and one is not None and r.get("rps") and one.get("rps"):
            r["rps_vs_one_worker"] = round(r["rps"] / one["rps"], 2)
        if r["target"].startswith("spooky+rl-") and one is not None and r.get("cpu_s_per_1k") and one.get("cpu_s_per_1k"):
            r["cpu_vs_no_rule"] = round(r["cpu_s_per_1k"] / one["cpu_s_per_1k"], 3)
        if (r["target"].startswith("spooky-t") or r["target"] == "spooky+stack") and one is not None and r.get("cpu_s_per_1k") and one.get("cpu_s_per_1k"):
            r["cpu_vs_untraced"] = round(r["cpu_s_per_1k"] / one["cpu_s_per_1k"], 3)
    caddy = {(r["scenario"], r.get("run", 1)): r for r in rows if r["target"] == "caddy"}
    for r in rows:
        c = caddy.get((r["scenario"], r.get("run", 1)))
        if not r["target"].startswith("spooky") or c is None:
            continue
        if r.get("cpu_s_per_1k") and c.get("cpu_s_per_1k"):
            r["cpu_ratio"] = round(r["cpu_s_per_1k"] / c["cpu_s_per_1k"], 2)
        if r.get("rps") and c.get("rps"):
            r["rps_ratio"] = round(r["rps"] / c["rps"], 2)
        if r.get("rss_per_connection_kib") and c.get("rss_per_connection_kib"):
            r["rss_per_connection_ratio"] = round(r["rss_per_connection_kib"] / c["rss_per_connection_kib"], 2)


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and target, the median of each number over the repeated runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["target"]), []).append(r)
    out = []
    for (scenario, target), group in groups.items():
        m: dict[str, Any] = {"scenario": scenario, "target": target, "run": f"med{len(group)}",
                             "errors": sum(r["errors"] for r in group)}
        for key in ("rps", "p50_ms", "p99_ms", "max_ms", "cpu_s_per_1k", "peak_rss_mb", "cpu_ratio", "rps_ratio",
                    "rss_per_connection_kib", "connections", "offered_rate", "skipped", "rps_vs_one_worker",
                    "cpu_vs_no_rule", "cpu_vs_untraced", "spans_exported"):
            values = sorted(r[key] for r in group if r.get(key) is not None)
            if values:
                m[key] = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        out.append(m)
    return out


def git_describe() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    quick = os.environ.get("BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("-s", "--scenarios", default=",".join(DEFAULT_ORDER),
                   help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all but {', '.join(sorted(OPTIONAL))}, "
                        "whose HTTP/3 origin is Caddy, or hypercorn without it)")
    p.add_argument("-t", "--targets", default="spooky,caddy", help="spooky and/or caddy (caddy is skipped if not installed); NAME=DIR adds the spooky-trio "
                        "sources in DIR (a src/ directory or a checkout holding one) as target spooky@NAME, for before/after in one run; "
                        "spooky+api_key and spooky+jwt run this checkout with the pool behind an API key or an RS256 JWT "
                        "(bench/auth.py), the load sending valid credentials; spooky+plugin-noop and spooky+plugin-example with one "
                        "plugin filter on the pool (bench/plugins.py); spooky+stack with all three: JWT, one local rate-limit "
                        "rule and the no-op plugin (NAME+stack=DIR: that checkout behind the same stack)")
    p.add_argument("-w", "--workers", default="1",
                   help="comma-separated performance.worker_threads values for the spooky target, e.g. 1,2 (N > 1 runs as "
                        "target spooky-wN; its note gives req/s relative to the 1-worker row)")
    p.add_argument("--quic-lb", default="off",
                   help="comma-separated QUIC-LB CID setups for the spooky target: off, plain (no key), key (AES "
                        "four-pass); plain and key run as spooky+lb-plain, spooky+lb-key (docs/fleet.md)")
    p.add_argument("--rate-limit", default="none",
                   help="comma-separated scoped-rate-limit setups for the spooky target: none, local (one rule in this "
                        "process), redis (the same rule in a redis-server the bench starts); local runs as target "
                        "spooky+rl-local, redis as spooky+rl-redis (bench/targets.py rate_limit_config)")
    p.add_argument("--tracing", default="",
                   help="comma-separated observability.tracing settings for the spooky target: off, or a sample_ratio "
                        "(e.g. off,1,0); ratio R runs as target spooky-tR with tracing enabled, exporting over OTLP/gRPC "
                        "to a receiver in this process (tests/support/otlp.py)")
    p.add_argument("--discovery", default="",
                   help="comma-separated: none, file; file adds the target spooky+disc-file, whose pool's backend comes "
                        "from a discovery file polled every second (bench/targets.py SpookyServer.backends_config)")
    p.add_argument("--traffic", default="none",
                   help="comma-separated traffic-policy setups for the spooky target: none, headers (the load sends "
                        "three extra header fields, no policy), matchers (those fields matched by three route matchers, "
                        "plus a request header rewrite), mirror (10 %% of requests copied to a shadow pool on the same "
                        "origin); MODE runs as target spooky+tp-MODE (bench/targets.py traffic_config)")
    p.add_argument("-d", "--duration", type=float, default=2.0 if quick else 10.0, help="seconds of load per measurement")
    p.add_argument("-n", "--requests", type=int, default=0, help="requests per measurement instead of a duration")
    p.add_argument("--rate", type=float, default=0.0,
                   help="HTTP/3 scenarios: open loop at this many requests/s in total (latency from the scheduled "
                        "start; requests due while all stream slots are busy are skipped and counted)")
    p.add_argument("--half-saturation", action="store_true",
                   help="HTTP/3 scenarios: first find spooky's closed-loop requests/s (two measurements, not reported "
                        "as rows), then run every target open loop at half of it (sets --rate per scenario)")
    p.add_argument("-p", "--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("-c", "--connections", type=int, default=0, help="override the scenario's total connections")
    p.add_argument("-m", "--streams", type=int, default=0, help="override the scenario's streams per connection")
    p.add_argument("--warmup", type=int, default=2, help="warm-up requests per stream slot")
    p.add_argument("--idle-connections", type=int, default=200 if quick else 1000)
    p.add_argument("-r", "--repeat", type=int, default=1, help="measure each scenario and target this many times")
    p.add_argument("--origin", choices=("nginx", "builtin"), default="nginx", help="builtin when nginx is missing")
    p.add_argument("--json", default="", help="write results here (default bench/results/<time>-<commit>.json)")
    p.add_argument("--profile", action="store_true", help="py-spy the spooky process over each measured phase")
    p.add_argument("--cprofile", action="store_true",
                   help="cProfile the spooky process over each measured phase: top functions and Python calls per request")
    p.add_argument("--keep-workdir", action="store_true")
    return p.parse_args(argv)


def target_src(directory: str) -> Path:
    """The sources of a ``NAME=DIR`` target: DIR when it holds the ``spooky_trio`` package (a
    ``src/`` directory), else DIR/src (a checkout's root). Anything else is refused: the
    child's PYTHONPATH would fall through to this checkout's code and measure it twice."""
    path = Path(directory).resolve()
    for candidate in (path, path / "src"):
        if (candidate / "spooky_trio" / "__init__.py").is_file():
            return candidate
    raise SystemExit(f"{directory}: no spooky_trio package in it or in its src/")


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    targets = [t for t in args.targets.split(",") if t]
    targets = [f"{t.partition('=')[0]}={target_src(t.partition('=')[2])}" if "=" in t else t for t in targets]
    counts = [int(n) for n in args.workers.split(",") if n]
    if "spooky" in targets and counts != [1]:  # --workers 1,2: spooky (1 worker) and spooky-w2
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if n == 1 else f"spooky-w{n}" for n in counts]
    lbs = [m for m in args.quic_lb.split(",") if m]
    if any(m not in ("off", "plain", "key") for m in lbs):
        raise SystemExit(f"--quic-lb takes off, plain and key (got {args.quic_lb})")
    if "spooky" in targets and lbs != ["off"]:  # --quic-lb off,key: spooky and spooky+lb-key
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if m == "off" else f"spooky+lb-{m}" for m in lbs]
    if counts != [1]:  # --workers 1,2 also runs each NAME=DIR checkout as NAME-w2=DIR
        targets = [f"{t.partition('=')[0]}{'' if n == 1 else f'-w{n}'}={t.partition('=')[2]}" if "=" in t else t
                   for t in targets for n in (counts if "=" in t else [1])]
    modes = [m for m in args.rate_limit.split(",") if m]
    if any(m not in ("none", "local", "redis") for m in modes):
        raise SystemExit(f"--rate-limit takes none, local and redis (got {args.rate_limit})")
    tracings = [t.strip() for t in args.tracing.split(",") if t.strip()]
    for t in tracings:
        if t != "off" and not (t.replace(".", "", 1).isdigit() and 0 <= float(t) <= 1):
            raise SystemExit(f"--tracing: {t!r} is neither off nor a sample ratio in [0, 1]")
    if "spooky" in targets and tracings:  # --tracing off,1: spooky (tracing off) and spooky-t1
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if t == "off" else f"spooky-t{t}" for t in tracings]
    skipped = []
    if "redis" in modes and not shutil.which("redis-server"):
        modes.remove("redis")
        skipped.append("spooky+rl-redis (redis-server not installed)")
    if "spooky" in targets and modes != ["none"]:  # --rate-limit none,local: spooky and spooky+rl-local
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if m == "none" else f"spooky+rl-{m}" for m in modes]
    discoveries = [d.strip() for d in args.discovery.split(",") if d.strip()]
    if any(d not in ("none", "file") for d in discoveries):
        raise SystemExit(f"--discovery takes none and file (got {args.discovery})")
    if "spooky" in targets and discoveries:  # --discovery none,file: spooky and spooky+disc-file
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if d == "none" else f"spooky+disc-{d}" for d in discoveries]
    traffic = [m for m in args.traffic.split(",") if m]
    if any(m not in ("none", "headers", "matchers", "mirror") for m in traffic):
        raise SystemExit(f"--traffic takes none, headers, matchers and mirror (got {args.traffic})")
    if "spooky" in targets and traffic != ["none"]:  # --traffic none,matchers: spooky and spooky+tp-matchers
        at = targets.index("spooky")
        targets[at:at + 1] = ["spooky" if m == "none" else f"spooky+tp-{m}" for m in traffic]
    if "caddy" in targets and not shutil.which("caddy"):
        targets.remove("caddy")
        skipped.append("caddy (not installed)")
    if "bootstrap_h2" in names and not shutil.which("h2load"):
        names.remove("bootstrap_h2")
        skipped.append("bootstrap_h2 (h2load not installed)")
    workdir = Path(tempfile.mkdtemp(prefix="spooky-bench-"))
    started = time.time()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "commit": git_describe(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "load_before": procstat.load_average()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep_workdir")},
        "skipped": skipped, "rows": [],
    }
    bench = Bench(args, workdir)
    from bench.targets import make_certs

    make_certs(bench.certs)
    origin = Origin(workdir, bench.certs, prefer=args.origin, h3=any(SCENARIOS[n]["upstream"] == "h3" for n in names))
    result["origin"] = origin.kind + (f" + {origin.h3_kind} (HTTP/3)" if origin.h3_kind else "")
    origin.start()
    redis = RedisServer(workdir) if any(t == "spooky+rl-redis" for t in targets) else None
    collector = contextlib.ExitStack()
    otlp = None
    if any(t.startswith("spooky-t") for t in targets):
        from tests.support.otlp import grpc_receiver  # an OTLP/gRPC receiver on opentelemetry-proto

        otlp = collector.enter_context(grpc_receiver())
    try:
        if redis is not None:
            redis.start()
        for name in names:
            sc = dict(SCENARIOS[name])
            if args.connections and sc["kind"] != "idle":
                sc["connections"] = args.connections
            if args.streams:
                sc["streams"] = args.streams
            if args.half_saturation and sc["kind"] == "h3":
                args.rate = saturation(bench, origin, name, sc) / 2
                result.setdefault("half_saturation", {})[name] = args.rate
            for run_index in range(1, args.repeat + 1):
                # alternate the order per repetition: on a shared box whichever target runs
                # first in a repetition tends to measure lower (up to ~15% seen)
                for target in (targets if run_index % 2 else targets[::-1]):
                    if target == "caddy":
                        server = CaddyServer(workdir, bench.certs)
                    elif "=" in target:  # NAME=DIR: another checkout's src (resolved above)
                        label, _, src = target.partition("=")
                        count = int(label.rpartition("-w")[2]) if re.fullmatch(r".*-w\d+", label) else 1
                        stack = {"auth": BenchAuth("jwt", workdir), "rate_limit": "local", "plugin": BenchPlugin("noop")} \
                            if label.endswith("+stack") else {}  # NAME+stack=DIR: that checkout behind the stack
                        server = SpookyServer(workdir, bench.certs, src=Path(src), name=f"spooky@{label}", workers=count,
                                              cprofile_out=workdir / f"cprofile-{label}.pstats" if args.cprofile else None,
                                              **stack)  # type: ignore[arg-type]
                    elif target.startswith("spooky+lb-"):  # --quic-lb MODE: listen.quic_lb
                        server = SpookyServer(workdir, bench.certs, name=target, quic_lb=target[len("spooky+lb-"):],
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky+rl-"):  # --rate-limit MODE: one scoped rate limit rule
                        server = SpookyServer(workdir, bench.certs, name=target, rate_limit=target[len("spooky+rl-"):],
                                              redis_url=redis.url if redis is not None else None,
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky-t"):  # --tracing R: tracing on at sample_ratio R
                        assert otlp is not None
                        server = SpookyServer(workdir, bench.certs, name=target, tracing=float(target[len("spooky-t"):]),
                                              otlp_endpoint=otlp.endpoint,
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky+disc-"):  # --discovery file: the backend from a discovery file
                        server = SpookyServer(workdir, bench.certs, name=target, discovery=target[len("spooky+disc-"):],
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky+tp-"):  # --traffic MODE: a traffic policy on the bench pool
                        server = SpookyServer(workdir, bench.certs, name=target, traffic=target[len("spooky+tp-"):],
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target == "spooky+stack":  # JWT (cached key) + one local rate-limit rule + a no-op plugin
                        server = SpookyServer(workdir, bench.certs, name=target, auth=BenchAuth("jwt", workdir),
                                              rate_limit="local", plugin=BenchPlugin("noop"),
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky+plugin-"):  # spooky+plugin-noop, spooky+plugin-example: bench/plugins.py
                        server = SpookyServer(workdir, bench.certs, name=target, plugin=BenchPlugin(target[len("spooky+plugin-"):]),
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky+"):  # spooky+api_key, spooky+jwt: bench/auth.py
                        server = SpookyServer(workdir, bench.certs, name=target, auth=BenchAuth(target[len("spooky+"):], workdir),
                                              cprofile_out=workdir / f"cprofile-{target}.pstats" if args.cprofile else None)
                    elif target.startswith("spooky-w"):  # --workers N: performance.worker_threads N
                        server = SpookyServer(workdir, bench.certs, workers=int(target[len("spooky-w"):]), name=target)
                    else:
                        server = SpookyServer(workdir, bench.certs,
                                              cprofile_out=workdir / "cprofile-spooky.pstats" if args.cprofile else None)
                    load = procstat.load_average()
                    spans_before = len(otlp.sink.spans) if otlp is not None else 0
                    row = bench.measure(server, origin, name, sc)
                    if target.startswith("spooky-t") and otlp is not None:  # what the collector got (warm-up included)
                        row["spans_exported"] = len(otlp.sink.spans) - spans_before
                    row["run"] = run_index
                    row["load_avg"] = load
                    result["rows"].append(row)
                    print(f"  {name:<13} {target:<7} run {run_index}: {row.get('rps', '-')} req/s, "
                          f"{row.get('cpu_s_per_1k', '-')} CPU s/1k, errors {row['errors']}", file=sys.stderr, flush=True)
    finally:
        origin.stop()
        if redis is not None:
            redis.stop()
        collector.close()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(result["rows"])
    result["host"]["load_after"] = procstat.load_average()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def saturation(bench: Bench, origin: Origin, name: str, sc: dict[str, Any]) -> float:
    """``--half-saturation``: spooky's (this checkout, no options) closed-loop requests/s for
    the scenario, the mean of two measurements; the open-loop rate is then half of it."""
    rate, bench.args.rate = bench.args.rate, 0.0
    try:
        rows = [bench.measure(SpookyServer(bench.workdir, bench.certs), origin, name, sc) for _ in range(2)]
    finally:
        bench.args.rate = rate
    found = (rows[0]["rps"] + rows[1]["rps"]) / 2
    print(f"  {name:<13} spooky saturation {found:.0f} req/s: open loop at {found / 2:.0f}/s", file=sys.stderr, flush=True)
    return float(found)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop our processes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    result = run(args)
    print(f"\nspooky-trio bench  commit {result['commit']}  origin {result['origin']}  "
          f"cpus {result['host']['cpus']}  load avg before {result['host']['load_before']} "
          f"after {result['host']['load_after']}")
    if result["skipped"]:
        print("skipped: " + ", ".join(result["skipped"]))
    print(render_table(result["rows"]))
    if args.repeat > 1:
        result["medians"] = medians(result["rows"])
        print(f"\nmedians over {args.repeat} runs")
        print(render_table(result["medians"]))
    path = Path(args.json) if args.json else RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}-{result['commit']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 1 if any(r["errors"] for r in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
