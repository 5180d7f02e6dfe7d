# The README's two commands: `make run` serves the bundled model, `make test` tests it all.
# VENV is made from /usr/bin/python3 and must be readable by Apache's daemon user.
VENV ?= /opt/beagle-dev/venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two pytest processes (pytest-xdist): most tests wait on deploys, servers and timeouts, so
# two overlap even on two cores; tests/conftest.py says how modules are shared out.
TEST_PROCESSES ?= 2

.PHONY: setup run test lint model bench
setup:
	@scripts/bootstrap.sh $(VENV) requirements.txt requirements-dev.txt

run: setup
	@$(PYTHON) -m tools.devstack

test: export BEAGLE_APT_EXTRA = chromium openssh-server debootstrap nftables socat faketime wrk pebble testssl.sh redis-sentinel haproxy prometheus
test: setup lint
	$(PYTHON) -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

# Fails fast, before the suite: ruff's lint and format, mypy on app/ and provisioning/.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Retrain the bundled digits model (models/digits/1) and its sample images.
model: setup
	$(PYTHON) -m scripts.train_digits

# The benchmark (stress/bench.py): MobileNetV2 (random weights, offline) raw and served,
# driven by wrk; writes reports/bench/report.md, results.json and bench.png.
#   make bench PEER=litserve              Beagle and LitServe side by side
#   make bench MODEL=null PEER=litserve   the stacks alone (a model that computes nothing)
#   make bench BENCH_ARGS="--concurrency 1,64 --requests 3000"
MODEL ?= mobilenet_v2
PEER ?=
bench: export BEAGLE_APT_EXTRA = wrk
bench: setup
	$(PYTHON) -m stress.bench --model $(MODEL) $(if $(PEER),--peer $(PEER)) $(BENCH_ARGS)
