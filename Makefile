# The README's two commands: `make demo` and `make test`. Each does its own set-up on a fresh machine
# (Python venv + packages, npm packages for anvil/solc, redis-server binary) and is safe to re-run.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
NPM_STAMP := node_modules/.installed

.PHONY: setup demo test test-all gas-report compile devnet-up devnet-down clean

setup: $(VENV_STAMP) $(NPM_STAMP) redis-bin

$(VENV_STAMP): pyproject.toml
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# Tests start their own redis-server on a free port, so the binary must exist even when a Redis is listening.
redis-bin:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server; fi; }

demo: setup
	.venv/bin/dvp-relayer demo

test: setup
	bash scripts/run-tests.sh

gas-report: setup
	$(PY) -m deploy.gas_report

compile: setup
	$(PY) -m deploy.compile

devnet-up: setup
	.venv/bin/dvp-relayer devnet up

devnet-down: setup
	.venv/bin/dvp-relayer devnet down

clean:
	rm -rf .venv node_modules .devnet .pytest_cache
