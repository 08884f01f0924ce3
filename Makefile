# The README's two commands: `make demo` and `make test`. Each does its own set-up on a fresh machine
# (Python venv + packages, npm packages for anvil/solc, redis-server binary) and is safe to re-run.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
NPM_STAMP := node_modules/.installed

.PHONY: setup system-deps demo test test-slow chaos-long bench bench-scale gas-report compile devnet-up devnet-down clean

setup: $(VENV_STAMP) $(NPM_STAMP) system-deps

$(VENV_STAMP): pyproject.toml
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# Debian packages: redis-server (tests start their own on a free port, so the binary must exist even when a
# Redis is listening), chromium (the dashboard's browser test; playwright drives it, no browser download),
# softhsm2 (a real PKCS#11 software HSM for the pkcs11: signers' tests and bench), prometheus (its promtool checks
# and unit-tests the shipped alert rules) and systemd (systemd-analyze verifies the shipped unit).
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
system-deps:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	 command -v chromium >/dev/null || missing="$$missing chromium"; \
	 command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	 command -v promtool >/dev/null || missing="$$missing prometheus"; \
	 command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	 if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	   $(APT) update -qq && $(APT) install -y -qq $$missing; fi

demo: setup
	.venv/bin/dvp-relayer demo
	.venv/bin/dvp-relayer demo --same-ledger

test: setup
	bash scripts/run-tests.sh

# The slow tests (a bounded chaos run, the wheel installed in a fresh venv); CI runs them after `make test`.
test-slow: setup
	bash scripts/run-tests.sh -m slow

# Long fault-injection run (not part of `make test`): 1000 trades, every fault kind many times.
chaos-long: setup
	.venv/bin/dvp-relayer chaos --trades 2000 --seed $(or $(SEED),42) --concurrency 40 --fault-interval 0.55 --fault-rounds 50 --max-seconds 9000 --workdir .chaos

# Benchmark (not part of `make test`): raw ceiling, latency, batching off/on, side by side in one run.
bench: setup
	.venv/bin/dvp-relayer bench

bench-scale: setup
	.venv/bin/dvp-relayer bench --workers 1,2,4 --pairs 4 --trades 400

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
