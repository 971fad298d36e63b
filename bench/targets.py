"""The processes a benchmark run starts: the origin, spooky-trio, Caddy (and redis-server for
``--rate-limit redis``).

Everything lives in one temporary directory (configs, certificates, logs) and every process
is started by us, by pid, and stopped by that pid at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.auth import BenchAuth
    from bench.plugins import BenchPlugin

REPO = Path(__file__).resolve().parent.parent
ONE_MIB = 1 << 20


def free_port() -> int:
    """A port free for both UDP and TCP a moment ago (QUIC and the TCP listener share it)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no free port")


def wait_tcp(port: int, proc: subprocess.Popen, timeout: float = 20.0, what: str = "process") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on tcp {port} within {timeout}s")


def wait_ready(control_port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll the control API's /ready until 200 (with workers: every worker serves)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spooky-trio exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"spooky-trio not ready within {timeout}s")


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def python_env(src: Path | None = None) -> dict[str, str]:
    """The environment for our Python children: this checkout's sources (or ``src``) first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src or REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]))
    return env


def make_certs(directory: Path) -> None:
    from spooky_trio.devtools.devcerts import make_dev_certs

    make_dev_certs(directory)


class Origin:
    """The upstream: nginx (HTTP/1.1 on one port, HTTP/2 over TLS on another) when installed,
    else the built-in h11 origin plus hypercorn for HTTP/2 TLS. With ``h3`` also an HTTP/3
    origin (Debian's nginx has no QUIC): Caddy serving the same URL space when installed,
    else hypercorn with HTTP/3.

    URL space on all: ``GET /`` a tiny text, ``GET /bytes/1048576`` 1 MiB, ``POST /upload``
    reads the whole body and answers a tiny text.
    """

    def __init__(self, workdir: Path, certs: Path, *, prefer: str = "nginx", h3: bool = False) -> None:
        self.workdir = workdir
        self.certs = certs
        self.kind = "nginx" if prefer == "nginx" and shutil.which("nginx") else "builtin"
        self.h1_port = free_port()
        self.h2_port = free_port()
        self.h3_port = free_port() if h3 else 0
        self.h3_kind = ("caddy" if shutil.which("caddy") else "hypercorn") if h3 else ""
        self.procs: list[subprocess.Popen] = []

    @property
    def h1_url(self) -> str:
        return f"http://127.0.0.1:{self.h1_port}"

    @property
    def h2_url(self) -> str:
        return f"https://localhost:{self.h2_port}"

    @property
    def h3_url(self) -> str:
        return f"https://localhost:{self.h3_port}"

    def start(self) -> None:
        if self.kind == "nginx":
            self._start_nginx()
        else:
            self._start_builtin()
        if self.h3_kind == "caddy":
            self._start_caddy_h3()
        elif self.h3_kind == "hypercorn":
            self._start_hypercorn_h3()

    def _start_caddy_h3(self) -> None:
        root = self.workdir / "h3-origin"
        root.mkdir(parents=True, exist_ok=True)
        (root / "1m.bin").write_bytes(b"x" * ONE_MIB)
        caddyfile = f"""{{
    admin off
    auto_https off
    servers {{
        protocols h1 h2 h3
    }}
}}
https://:{self.h3_port} {{
    bind 127.0.0.1
    tls {self.certs / 'localhost.pem'} {self.certs / 'localhost.key'}
    handle / {{
        respond "hello from the bench origin
" 200
    }}
    handle /bytes/1048576 {{
        root * {root}
        rewrite * /1m.bin
        file_server
    }}
    handle /upload {{
        respond "uploaded
" 200
    }}
}}
"""
        path = root / "Caddyfile"
        path.write_text(caddyfile)
        env = dict(os.environ, HOME=str(root), XDG_DATA_HOME=str(root / "data"), XDG_CONFIG_HOME=str(root / "config"))
        log = open(root / "caddy.log", "wb")
        proc = subprocess.Popen(["caddy", "run", "--config", str(path), "--adapter", "caddyfile"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_tcp(self.h3_port, proc, what="caddy HTTP/3 origin")

    def _start_hypercorn_h3(self) -> None:
        log = open(self.workdir / "origin-h3.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--certfile", str(self.certs / "localhost.pem"),
             "--keyfile", str(self.certs / "localhost.key"), "--bind", f"127.0.0.1:{self.h3_port}",
             "--quic-bind", f"127.0.0.1:{self.h3_port}", "bench.asgi_origin:app"],
            env=python_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.procs.append(proc)
        wait_tcp(self.h3_port, proc, what="hypercorn HTTP/3 origin")

    def _start_nginx(self) -> None:
        root = self.workdir / "nginx"
        for sub in ("", "www", "tmp", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "www" / "1m.bin").write_bytes(b"x" * ONE_MIB)
        sink_port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        locations = f"""
        location = / {{ default_type text/plain; return 200 "hello from the bench origin\\n"; }}
        location = /bytes/1048576 {{ alias {root}/www/1m.bin; default_type application/octet-stream; }}
        # proxy_pass buffers the whole request body first: the upload is read to the end
        location = /upload {{ proxy_pass http://127.0.0.1:{sink_port}/; }}
"""
        conf = f"""{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 2m;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    http2_max_requests 1000000;
    server {{
        listen 127.0.0.1:{self.h1_port};
{locations}
    }}
    server {{
        listen 127.0.0.1:{self.h2_port} ssl http2;
        ssl_certificate {self.certs}/localhost.pem;
        ssl_certificate_key {self.certs}/localhost.key;
{locations}
    }}
    server {{
        listen 127.0.0.1:{sink_port};
        location / {{ default_type text/plain; return 200 "uploaded\\n"; }}
    }}
}}
"""
        path = root / "nginx.conf"
        path.write_text(conf)
        log = open(root / "logs" / "stderr.log", "wb")
        proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(path)], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_tcp(self.h1_port, proc, what="nginx")
        wait_tcp(self.h2_port, proc, what="nginx")

    def _start_builtin(self) -> None:
        env = python_env()
        log = open(self.workdir / "origin.log", "wb")
        h1 = subprocess.Popen(
            [sys.executable, "-m", "spooky_trio.devtools.origin", "--host", "127.0.0.1", "--port", str(self.h1_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(h1)
        wait_tcp(self.h1_port, h1, what="built-in origin")
        h2 = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--certfile", str(self.certs / "localhost.pem"),
             "--keyfile", str(self.certs / "localhost.key"), "--bind", f"127.0.0.1:{self.h2_port}",
             "bench.asgi_origin:app"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.procs.append(h2)
        wait_tcp(self.h2_port, h2, what="hypercorn origin")

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs.clear()


class Server:
    """A proxy under test: ``start(upstream_url, port)`` then ``pid``; ``stop()``."""

    name = "?"

    def __init__(self, workdir: Path, certs: Path) -> None:
        self.workdir = workdir
        self.certs = certs
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


class RedisServer:
    """A ``redis-server`` on a free loopback port, for the ``--rate-limit redis`` targets."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "wb")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        wait_tcp(self.port, self.proc, what="redis-server")

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def rate_limit_config(mode: str, redis_url: str | None) -> str:
    """The ``resilience`` section of ``--rate-limit MODE``: one ``client`` rule (peer IP) that
    never refuses (a billion tokens), so the measured cost is the check itself; ``redis``
    keeps its bucket in the store, failing closed so a store problem shows as errors."""
    if mode == "none":
        return ""
    rule = "    - {name: bench, scope: client, requests_per_sec: 1000000000, burst: 1000000000"
    if mode == "local":
        return f"resilience:\n  scoped_rate_limits:\n{rule}}}\n"
    return (f"resilience:\n  rate_limit_store: {{kind: redis, url: \"{redis_url}\", timeout_ms: 1000, failure_mode: fail_closed}}\n"
            f"  scoped_rate_limits:\n{rule}, store: redis}}\n")


#: ``--traffic MODE``: the three request fields every request of a traffic target carries
TRAFFIC_HEADERS = [("x-tenant", "acme"), ("x-client-version", "v2.3"), ("x-canary", "1")]


def traffic_config(mode: str) -> tuple[str, str, str]:
    """``--traffic MODE`` (docs/performance.md): (lines under the bench pool's ``route``,
    lines after its ``backends``, pools to add). ``headers``: nothing but the fields the load
    sends (the baseline of the next two); ``matchers``: three header matchers on the route
    (exact, prefix, present) and a request header rewrite; ``mirror``: a copy of 10 % of the
    requests to a shadow pool on the same origin."""
    if mode in ("none", "headers"):
        return "", "", ""
    if mode == "matchers":
        route = ("      headers:\n        - {name: x-tenant, exact: acme}\n        - {name: x-client-version, prefix: v2}\n"
                 "        - {name: x-canary, present: true}\n")
        return route, "    traffic_policy:\n      request_headers: {set: {x-env: bench}}\n", ""
    if mode == "mirror":
        return "", "    traffic_policy:\n      mirror: {pool: shadow, percent: 10}\n", "shadow"
    raise ValueError(f"--traffic: unknown mode {mode!r}")


class SpookyServer(Server):
    """The real ``spooky-trio run`` process with a generated config."""

    name = "spooky"

    def __init__(self, workdir: Path, certs: Path, *, workers: int = 1, src: Path | None = None, name: str = "spooky",
                 cprofile_out: Path | None = None, rate_limit: str = "none", redis_url: str | None = None,
                 tracing: float | None = None, otlp_endpoint: str = "", auth: BenchAuth | None = None,
                 discovery: str | None = None, traffic: str = "none", plugin: BenchPlugin | None = None, quic_lb: str = "off") -> None:
        super().__init__(workdir, certs)
        #: ``--discovery file``: the pool's one backend comes from a discovery file polled
        #: every second (docs/discovery.md), instead of the config's ``backends``
        self.discovery = discovery
        #: the pool's plugin filter (bench/plugins.py), or None
        self.plugin = plugin
        #: ``--quic-lb``: off, plain (QUIC-LB CIDs without a key) or key (four-pass AES CIDs)
        self.quic_lb = quic_lb
        #: the pool's auth mode (bench/auth.py) and the credentials the load sends
        self.auth = auth
        self.request_headers = auth.headers if auth is not None else plugin.headers if plugin is not None else []
        #: ``--traffic``: none, headers, matchers or mirror (:func:`traffic_config`)
        self.traffic = traffic
        if traffic != "none":
            self.request_headers = self.request_headers + TRAFFIC_HEADERS
        self.workers = workers
        #: ``--rate-limit``: none, local or redis (:func:`rate_limit_config`)
        self.rate_limit = rate_limit
        self.redis_url = redis_url
        #: observability.tracing.sample_ratio with tracing enabled (None: tracing off), spans
        #: exported over OTLP/gRPC to ``otlp_endpoint`` (bench/run.py's receiver)
        self.tracing = tracing
        self.otlp_endpoint = otlp_endpoint
        #: run under bench/cprofile_run.py (profiling switched by SIGUSR1/SIGUSR2) writing here
        self.cprofile_out = cprofile_out
        self.control_port = free_port() if workers > 1 else 0
        #: another checkout's ``src`` to run instead of this one (A/B in one invocation)
        self.src = src
        self.name = name

    def _quic_lb_block(self) -> str:
        """``listen.quic_lb`` for ``--quic-lb`` (docs/fleet.md): server ID 0x0a0b, nonce 6."""
        if self.quic_lb == "off":
            return ""
        key = ""
        if self.quic_lb == "key":
            path = self.workdir / "quic-lb.key"
            path.write_text("8f95f09245765f80256934e50c66207f\n")
            key = f", key_file: \"{path}\""
        return f"  quic_lb: {{config_id: 1, server_id: '0x0a0b', nonce_length: 6{key}}}\n"

    def config_text(self, upstream_url: str, port: int, protocol: str = "auto") -> str:
        tls = f'    tls:\n      ca_file: "{self.certs / "ca.pem"}"\n' if upstream_url.startswith("https") else ""
        if protocol == "h3":  # the scenario's origin speaks HTTP/3 (tiny_h3up, download_1m_h3up)
            tls += "    upstream_protocol: h3\n"
        origin_tls = tls
        if self.auth is not None:
            tls += self.auth.pool_config()
        if self.plugin is not None:
            tls += self.plugin.pool_config()
        workers = f"  worker_threads: {self.workers}\n" if self.workers > 1 else ""
        # with workers: the supervisor's /ready (every worker serving) gates the load
        control = (f"  control_api:\n    enabled: true\n    port: {self.control_port}\n"
                   if self.workers > 1 else "")
        if self.tracing is not None:
            control += (f"  tracing:\n    enabled: true\n    sample_ratio: {self.tracing}\n"
                        f"    otlp_endpoint: \"{self.otlp_endpoint}\"\n")
        if control:
            control = "observability:\n" + control
        route, policy, shadow = traffic_config(self.traffic)
        if shadow:
            policy += f"  {shadow}:\n{origin_tls}    backends:\n      - id: \"shadow\"\n        address: \"{upstream_url}\"\n"
        return f"""version: 1
listen:
  address: "127.0.0.1"
  port: {port}
  tls:
    cert: "{self.certs / 'localhost.pem'}"
    key: "{self.certs / 'localhost.key'}"
{self._quic_lb_block()}upstream:
  bench:
    route:
      path_prefix: "/"
{route}{tls}{self.backends_config(upstream_url, port)}
{policy}performance:
{workers}  quic_max_idle_timeout_ms: 120000
  max_request_body_bytes: 16777216
  # Caddy's defaults: 3 s dial timeout, no response-header timeout (a loaded 2-core box
  # can take longer than our 500 ms default to accept 32 new connections at once)
  backend_connect_timeout_ms: 3000
  backend_timeout_ms: 30000
  backend_body_idle_timeout_ms: 30000
  # no shedding in a benchmark of the proxying cost (Caddy has no limit here; at exactly 64
  # concurrent requests the default 64 shed a few 503s while slots were being handed back)
  per_backend_inflight_limit: 4096
log:
  level: warn
security:
  privileges:
    enabled: false
{control}{rate_limit_config(self.rate_limit, self.redis_url)}{self.plugin.top_level() if self.plugin is not None else ""}"""

    def backends_config(self, upstream_url: str, port: int) -> str:
        """The pool's ``backends`` (or, with ``--discovery file``, its discovery block and file)."""
        if self.discovery == "file":
            listing = self.workdir / f"spooky-{port}-backends.yaml"
            listing.write_text(f'- {{id: origin, address: "{upstream_url}"}}\n')
            return f'    backends: []\n    discovery: {{kind: file, path: "{listing}", refresh_ms: 1000}}'
        return f'    backends:\n      - id: "origin"\n        address: "{upstream_url}"'

    def start(self, upstream_url: str, port: int, protocol: str = "auto") -> None:
        self.port = port
        if self.auth is not None:
            self.auth.start()
        path = self.workdir / f"spooky-{port}.yaml"
        path.write_text(self.config_text(upstream_url, port, protocol))
        env = python_env(self.src)
        if self.plugin is not None and self.plugin.python_path:
            env["PYTHONPATH"] = os.pathsep.join([*self.plugin.python_path, env["PYTHONPATH"]])
        module = "spooky_trio"
        if self.cprofile_out is not None:
            module = "bench.cprofile_run"
            env["SPOOKY_CPROFILE_OUT"] = str(self.cprofile_out)
        log = open(self.workdir / f"spooky-{port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(path)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        wait_tcp(port, self.proc, what="spooky-trio")
        if self.workers > 1:  # every worker must have bound its sockets before the load connects
            wait_ready(self.control_port, self.proc)


    def stop(self) -> None:
        super().stop()
        if self.auth is not None:
            self.auth.stop()


class CaddyServer(Server):
    """Caddy as an HTTP/3 (and HTTP/1.1+2) reverse proxy to the same origin, same certificate."""

    name = "caddy"

    def start(self, upstream_url: str, port: int, protocol: str = "auto") -> None:
        self.port = port
        transport = ""
        if upstream_url.startswith("https"):
            # HTTP/3 to the origin: Caddy's experimental HTTP/3 transport (no negotiation)
            versions = "\n            versions 3" if protocol == "h3" else ""
            transport = f"""
        transport http {{
            tls_trusted_ca_certs {self.certs / 'ca.pem'}{versions}
        }}"""
        caddyfile = f"""{{
    admin off
    auto_https disable_redirects
    servers {{
        protocols h1 h2 h3
    }}
}}
https://:{port} {{
    bind 127.0.0.1
    tls {self.certs / 'localhost.pem'} {self.certs / 'localhost.key'}
    reverse_proxy {upstream_url} {{{transport}
    }}
}}
"""
        path = self.workdir / f"Caddyfile-{port}"
        path.write_text(caddyfile)
        env = dict(os.environ)
        env["HOME"] = str(self.workdir)
        env["XDG_DATA_HOME"] = str(self.workdir / "caddy-data")
        env["XDG_CONFIG_HOME"] = str(self.workdir / "caddy-config")
        log = open(self.workdir / f"caddy-{port}.log", "wb")
        self.proc = subprocess.Popen(
            ["caddy", "run", "--config", str(path), "--adapter", "caddyfile"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_tcp(port, self.proc, what="caddy")
