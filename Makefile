# spooky-trio: `make run` (demo proxy on loopback) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean check-config

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

check-config: $(STAMP) .dev-certs/localhost.pem
	for f in conf/*.yaml; do echo "$$f"; $(BIN)/spooky-trio check --config $$f || true; done

clean:
	rm -rf $(VENV) .dev-certs .pytest_cache build src/*.egg-info
