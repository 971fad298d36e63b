# spooky-trio: `make run` (demo proxy on loopback) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean check-config fuzz fuzz-smoke bench test-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

.dev-certs/localhost.pem: | $(STAMP)
	$(BIN)/python -m spooky_trio.devtools.devcerts .dev-certs

# the proxy's and the demo origin's ports; when one is taken: make run PORT=9890 ORIGIN_PORT=8082
PORT ?= 9889
ORIGIN_PORT ?= 8081

run: $(STAMP) .dev-certs/localhost.pem
	$(BIN)/python -m spooky_trio.devtools.demo --config conf/dev.yaml --port $(PORT) --origin-port $(ORIGIN_PORT)

# optional peers some tests and `make bench` use (ngtcp2's gtlsclient for HTTP/3 interop and
# its gtlsserver as the independent HTTP/3 backend, nginx and caddy as origin and reference
# proxy, h2load, redis-server for the shared rate-limit store; systemd's systemd-analyze checks
# the packaged unit; dnsmasq (the dnsmasq-base binary, without the system service that would
# take port 53) and etcd for backend discovery); tests skip with the reason when a tool is
# missing (and fail under CI=true). Installs from Debian's packages when run as root, else
# says what to install. The packages' own services are stopped: tests start their own servers
# on free loopback ports.
TEST_TOOLS := ngtcp2-client ngtcp2-server nginx-light caddy nghttp2-client redis-server systemd dnsmasq-base etcd-server
test-tools:
	@if command -v gtlsclient >/dev/null && { command -v gtlsserver || test -x /usr/sbin/gtlsserver; } >/dev/null && command -v nginx >/dev/null && command -v caddy >/dev/null && command -v h2load >/dev/null \
		&& command -v redis-server >/dev/null && command -v systemd-analyze >/dev/null \
		&& command -v dnsmasq >/dev/null && command -v etcd >/dev/null; then \
		echo "test tools present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_TOOLS) >/dev/null \
			&& (service nginx stop >/dev/null 2>&1 || true) && (service redis-server stop >/dev/null 2>&1 || true) \
			&& (service etcd stop >/dev/null 2>&1 || true) && (systemctl stop ngtcp2d >/dev/null 2>&1 || true)) \
			|| echo "warning: could not install $(TEST_TOOLS); the tests that need them will skip"; \
	else \
		echo "optional: sudo apt-get install $(TEST_TOOLS) (tests that need them skip)"; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# spooky-trio vs Caddy, same run (bench/run.py; docs/performance.md). BENCH_ARGS passes options,
# e.g. BENCH_ARGS='-s tiny_h1 -d 20 -r 3'; BENCH_QUICK=1 for a short smoke run. Needs nginx,
# caddy and h2load for the full table (apt-get install nginx-light caddy nghttp2-client);
# without them it uses the built-in origin and skips the Caddy rows and h2load scenario.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	PYTHONPATH=$(CURDIR)/src:$(CURDIR) $(BIN)/python -m bench.run $(BENCH_ARGS)

# every fuzz/fuzz_*.py harness for FUZZ_SECONDS each; new crash inputs land in
# fuzz/crashes/<harness>/, the growing working corpus in fuzz/.work/<harness>/ (both untracked)
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES ?= $(basename $(notdir $(wildcard fuzz/fuzz_*.py)))

fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	@status=0; for h in $(FUZZ_HARNESSES); do \
		echo "== $$h ($(FUZZ_SECONDS)s)"; \
		mkdir -p fuzz/crashes/$$h fuzz/.work/$$h; \
		$(BIN)/python fuzz/$$h.py fuzz/.work/$$h fuzz/corpus/$$h \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -artifact_prefix=fuzz/crashes/$$h/ || status=1; \
	done; exit $$status

# CI's short campaign (.ci/run, after the tests): every harness (or FUZZ_HARNESSES) for
# FUZZ_SECONDS=20 each, ~4 min in all; exits non-zero on any crash, timeout or OOM and prints
# the crash input (fuzz/smoke.py). Installs the `fuzz` extra itself; if atheris is still
# missing it fails when CI is set and skips otherwise.
fuzz-smoke: FUZZ_SECONDS = 20
fuzz-smoke: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,fuzz]' || echo "fuzz-smoke: could not install the fuzz extra"
	$(BIN)/python fuzz/smoke.py --seconds $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

check-config: $(STAMP) .dev-certs/localhost.pem
	for f in conf/*.yaml; do echo "$$f"; $(BIN)/spooky-trio check --config $$f || true; done

clean:
	rm -rf $(VENV) .dev-certs .pytest_cache build src/*.egg-info
