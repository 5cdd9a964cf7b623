# ext-authz — `make run` (demo: ext-authz + Envoy + upstream) and `make test` on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-unit test-e2e lint typecheck venv protos clean system-deps bench bench-micro bench-hostile bench-envoy bench-propagation bench-receive-limit fuzz soak bench-rss tools spire helm istioctl

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@# xds-protos (Envoy's API) ships old copies of opentelemetry's proto modules under the same paths:
	@# whichever installs last wins. The OTLP exporter needs opentelemetry-proto's own.
	$(PY) -m pip install -q --disable-pip-version-check --force-reinstall --no-deps 'opentelemetry-proto==1.45.0'
	@touch $(STAMP)

# make run SPIRE=1: the same demo, with a real spire-server and spire-agent issuing the identities.
run: venv $(if $(filter 1,$(SPIRE)),spire)
	$(VENV)/bin/ext-authz dev up demo --envoy-config envoy.yaml $(if $(filter 1,$(SPIRE)),--spire)

# Test tools built from the Go module proxy (tools/NAME/go.mod), cached outside the repository keyed by
# go.mod+go.sum (EXT_AUTHZ_TOOLS_DIR, default ~/.cache/ext-authz/tools): built once, then instant.
tools: spire helm istioctl

spire helm istioctl:
	@$(PYTHON) -m ext_authz.dev.tools $@ >/dev/null

# Tests run a real redis-server and promtool (Debian's redis-server and prometheus packages): install
# what is missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: venv system-deps tools
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: venv system-deps helm istioctl
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e"

test-e2e: venv system-deps tools
	$(PY) -m pytest -q -p no:cacheprovider -m e2e

# Longer fuzzing than `make test` does: every atheris target for FUZZ_SECONDS, then hypothesis with many
# more examples. Findings are written to fuzz-findings/ (crash-* inputs reproduce with the same command).
FUZZ_SECONDS ?= 60
fuzz: venv
	@mkdir -p fuzz-findings
	@for t in check_request structured_request spiffe_id xfcc certificate jwt config; do \
	  echo "== fuzzing $$t for $(FUZZ_SECONDS)s"; \
	  $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz-findings/ -print_final_stats=1 2>&1 \
	    | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|.*Uncaught)" || exit 1; \
	done
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/fuzz/test_properties.py

# Benchmarks measure; tests never time things. Results land in bench/results/.
bench: bench-micro bench-hostile bench-envoy bench-propagation bench-receive-limit

# Debian's h2load (nghttp2-client) drives the Envoy comparison.
bench-envoy: venv
	@command -v h2load >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq nghttp2-client >/dev/null; fi; }
	$(PY) bench/envoy_bench.py

bench-micro: venv
	$(PY) bench/micro.py

# What grpcio and pygrpc-native hold for requests over their receive limit (why auto keeps native off TCP).
bench-receive-limit: venv
	$(PY) bench/receive_limit.py

# The worst Check across hostile inputs within the limits, beside a normal one (target: none over 10 ms).
bench-hostile: venv
	$(PY) bench/hostile.py

# RSS after 1,000,000 distinct tokens (bounded caches): about 6 minutes, so not part of `make bench`.
bench-rss: venv
	$(PY) bench/micro.py --rss 1000000

# Two minutes through Envoy with revocations, exceptions and grants churning (also a test in `make test`).
soak: venv
	$(PY) bench/soak.py 120 150

bench-propagation: venv system-deps
	$(PY) bench/propagation.py 200

lint: venv
	$(VENV)/bin/ruff check ext_authz tests
	$(VENV)/bin/ruff format --check ext_authz tests
	$(VENV)/bin/mypy

typecheck: venv
	$(VENV)/bin/mypy

# Our admin API: protos/ → ext_authz/_proto/ (committed). Envoy stubs come from the xds-protos wheel.
protos: venv
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info demo
