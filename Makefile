# Every command a newcomer needs; the README explains each.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup system-packages test unit integration render sandbox sandbox-down bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: $(PY) system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# redis-server, redis-cli, shellcheck and dash from Debian, when missing.
system-packages:
	sh tools/install-system-packages.sh

# The README's first command: the dev stack's Redis Cluster as local processes.
sandbox: setup
	$(PY) -m sandbox up

sandbox-down:
	$(PY) -m sandbox down

# The README's test command: unit tests (Pulumi mocks) and integration tests (real redis-server).
test: setup
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

lint:
	shellcheck -s sh components/scripts/*.sh

# Review every Kubernetes object of a stack as YAML: make render STACK=prod
STACK ?= dev
render: setup
	$(PY) -m tools.render_manifests --stack $(STACK)

bench: setup
	$(PY) -m benchmarks.bootstrap_benchmark
	$(PY) -m benchmarks.reliability_benchmark

clean:
	rm -rf $(VENV) .pytest_cache .sandbox
