# Every command a newcomer needs; the README explains each.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
# Proof that .venv holds requirements-dev.txt (and so requirements.txt): pip runs only when
# one of them is newer than this file, or .venv is new. `rm .venv/.requirements.stamp` forces it.
STAMP := $(VENV)/.requirements.stamp

# The shell scripts the repo tracks (and new ones not yet added, unless ignored); outside a git
# checkout, every *.sh but those of .venv and .sandbox. $(wildcard) drops deleted files.
SHELL_SCRIPTS := $(wildcard $(shell git ls-files --cached --others --exclude-standard -- '*.sh' 2>/dev/null))
ifeq ($(strip $(SHELL_SCRIPTS)),)
SHELL_SCRIPTS := $(shell find . \( -path ./.venv -o -path ./.venv-scan -o -path ./.sandbox -o -path ./.git \) -prune -o -name '*.sh' -type f -print | sort)
endif

.PHONY: setup system-packages engines test unit integration lint scan golden render sandbox sandbox-down bench clean

# Order-only: system-packages (python3-venv on a bare image) runs first, but never makes the
# venv look out of date.
$(PY): | system-packages
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: system-packages engines $(STAMP)

# shellcheck, dash and Redis 7.0 from Debian bookworm, when missing (fast when present).
system-packages:
	sh tools/install-system-packages.sh

# Redis and Valkey at the lines the stack deploys, into .engines/ (reused while current).
engines: | system-packages
	sh tools/fetch-engines.sh

# The README's first command: the dev stack's Redis Cluster as local processes.
sandbox: setup
	$(PY) -m sandbox up

sandbox-down:
	$(PY) -m sandbox down

# The engines the integration suite runs, each in a run of its own: make integration ENGINES=valkey
ENGINES ?= redis valkey

# The README's test command: unit tests (Pulumi mocks), then the integration tests (real
# servers on loopback) once per engine. Every run goes ahead even when an earlier one fails.
test: setup
	@status=0; \
	echo "$(PY) -m pytest tests/unit"; $(PY) -m pytest tests/unit || status=1; \
	$(MAKE) --no-print-directory integration ENGINES="$(ENGINES)" || status=1; \
	exit $$status

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	@status=0; \
	for engine in $(ENGINES); do \
		echo "$(PY) -m pytest tests/integration --engine $$engine"; \
		$(PY) -m pytest tests/integration --engine $$engine || status=1; \
	done; \
	exit $$status

# Ruff (rules in pyproject.toml), the formatter in check mode, and shellcheck: the pod scripts
# run under dash, so every *.sh is checked as POSIX sh; .ci/run is bash (its shebang says so).
# Every check runs even when an earlier one fails, so one run reports everything.
lint: setup
	@status=0; \
	echo "$(RUFF) check ."; $(RUFF) check . || status=1; \
	echo "$(RUFF) format --check ."; $(RUFF) format --check . || status=1; \
	echo "shellcheck -s sh $(SHELL_SCRIPTS)"; shellcheck -s sh $(SHELL_SCRIPTS) || status=1; \
	echo "shellcheck .ci/run"; shellcheck .ci/run || status=1; \
	exit $$status

# Rewrites the golden files of the rendered manifests, and the change-impact table
# (docs/change-impact.md), from the current code. Commit them with the change that caused them:
# reviewers then see every change to rendered output in the diff.
golden: setup
	$(PY) -m tools.render_manifests --update-golden
	$(PY) -m tools.change_impact --update

# Review every Kubernetes object of a stack as YAML: make render STACK=prod
STACK ?= dev
render: setup
	$(PY) -m tools.render_manifests --stack $(STACK)

# Figures, not tests (docs/figures.md). The partition benchmark and the soak need root
# (nftables, cgroups) and take about 35 and 25 minutes.
bench: setup
	$(PY) -m benchmarks.bootstrap_benchmark
	$(PY) -m benchmarks.reliability_benchmark
	$(PY) -m benchmarks.fault_benchmark
	$(PY) -m benchmarks.partition_benchmark
	$(PY) -m benchmarks.soak_benchmark

# The auditor's Kubernetes scanner (checkov, pinned, in .venv-scan) on every golden render: a
# finding not fixed or carried as a `checkov.io/skipN: CKV_K8S_XX=<reason>` annotation fails
# it. `make unit` runs it too (tests/unit/test_manifest_scan.py).
scan: system-packages
	sh tools/scan-manifests.sh

clean:
	rm -rf $(VENV) .venv-scan .pytest_cache .ruff_cache .sandbox
