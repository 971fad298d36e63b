# spooky-trio: `make run` (demo proxy on loopback) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean check-config fuzz bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

.dev-certs/localhost.pem: | $(STAMP)
	$(BIN)/python -m spooky_trio.devtools.devcerts .dev-certs

run: $(STAMP) .dev-certs/localhost.pem
	$(BIN)/python -m spooky_trio.devtools.demo --config conf/dev.yaml

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

check-config: $(STAMP) .dev-certs/localhost.pem
	for f in conf/*.yaml; do echo "$$f"; $(BIN)/spooky-trio check --config $$f || true; done

clean:
	rm -rf $(VENV) .dev-certs .pytest_cache build src/*.egg-info
