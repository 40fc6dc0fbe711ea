# dcsched: `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME ?= $(CURDIR)/.dcsched-demo

.PHONY: install system-deps test lint typecheck layers typetree unit demo demo-down bench clean

install: $(STAMP)

# torch is pinned here (a CPU build that lies on this machine's disk); the package
# itself only asks for a range.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The tests run a real Prometheus and promtool (Debian package `prometheus`); serving
# needs HAProxy (each deployment's load balancer) and bench/serve.py wrk.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
		echo "installing Prometheus (Debian package prometheus) for the tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ] || ! command -v wrk >/dev/null; then \
		echo "installing HAProxy and wrk (Debian packages haproxy, wrk) for dcsched serve"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends haproxy wrk >/dev/null; \
	fi
	@promtool --version | head -1
	@/usr/sbin/haproxy -v 2>/dev/null | head -1 || haproxy -v | head -1

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy follows the installed layout (dcsched, dcsched.plugins, dcsched.exporters) through
# a tree of symlinks, since setuptools' editable finder is invisible to it.
typetree:
	rm -rf build/typecheck && mkdir -p build/typecheck/dcsched
	for f in scheduler/*; do ln -s ../../../$$f build/typecheck/dcsched/; done
	ln -s ../../../plugins build/typecheck/dcsched/plugins
	ln -s ../../../exporters build/typecheck/dcsched/exporters

typecheck: install typetree
	MYPYPATH=build/typecheck $(BIN)/mypy -p dcsched
	MYPYPATH=build/typecheck $(BIN)/mypy deploy/grafana/generate.py

# The layering, by import-linter's contracts in pyproject.toml ([tool.importlinter]): the
# core imports no ray, sqlite3, fastapi, uvicorn, click or torch, nor the rest of dcsched;
# exporters do not import the service; the CLI imports no ray, torch or pydantic but in
# submit's and the server commands' own function-level imports.
layers: install typetree
	PYTHONPATH=build/typecheck $(BIN)/lint-imports

test: system-deps lint typecheck layers
	$(BIN)/python -m pytest -ra

unit: install system-deps
	$(BIN)/python -m pytest -ra tests/unit

# The demo ends by serving its model behind HAProxy (Debian package haproxy): installed here
# when apt is at hand; without it the demo says so and skips that step.
demo: install
	@if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ] && command -v apt-get >/dev/null; then \
		echo "installing HAProxy (Debian package haproxy) for the serving step of the demo"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null) \
			|| echo "could not install haproxy; the demo skips serving"; \
	fi
	DCSCHED_HOME=$(DEMO_HOME) $(BIN)/python examples/demo.py

demo-down:
	DCSCHED_HOME=$(DEMO_HOME) $(BIN)/dcsched down

# bench/live_admission.py and bench/soak.py (hundreds of jobs on a 4-node cluster, ~10
# minutes or more) and bench/api_scale.py (stores of 1,000 and 10,000 jobs, ~6 minutes)
# are not part of it: run them by hand (README, "Measured").
bench: install
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/run_latency.py
	$(BIN)/python bench/ddp.py
	$(BIN)/python bench/cli_latency.py
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/scrape.py

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
