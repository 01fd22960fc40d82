# The two newcomer commands: `make run` (set up, then run the main job on embedded defaults)
# and `make test`. Both create .venv from the pinned lock file on first use.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov, the Kubernetes security scanner the tests run over the rendered stacks: its own venv, since
# its pins conflict with the project's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed
UV := uv==0.13.8

.PHONY: setup scanner run test lint bench tools

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	# uv installs the lock's several GB (torch's CUDA wheels) in parallel and hard-links from its cache.
	$(PY) -m pip install --quiet $(UV)
	# --no-deps: the lock is the full, resolved set; skipping the resolver saves minutes.
	# --compile-bytecode: uv writes no .pyc (pip does), and with PYTHONDONTWRITEBYTECODE set (as on these machines)
	# every process compiles what it imports again: ~5 s of each connector start in the tests.
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

$(SCAN_STAMP): requirements-scan.lock $(STAMP)
	python3 -m venv $(SCAN_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(SCAN_VENV)/bin/python --no-deps -r requirements-scan.lock
	touch $(SCAN_STAMP)

scanner: $(SCAN_STAMP)

run: $(STAMP)
	$(VENV)/bin/pyflyte run workflows/gnn_training.py gnn_training

# The real engine (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok, the pulumi CLI,
# its Python language host, the pulumi-kubernetes provider and Flyte's flytepropeller), built from the
# pinned Go modules under tools/ into .tools/ (git-ignored); the provider is installed as a plugin in
# .tools/pulumi-home. Each binary rebuilds only when its module's go.mod/go.sum changes; Go's build
# cache makes a rebuild cheap.
TOOLS := .tools/bin
PROVIDER := .tools/provider/pulumi-resource-kubernetes
TOOL_BINS := $(TOOLS)/etcd $(TOOLS)/kube-apiserver $(TOOLS)/kube-controller-manager \
	$(TOOLS)/kube-scheduler $(TOOLS)/kwok $(TOOLS)/pulumi $(TOOLS)/pulumi-language-python $(PROVIDER) \
	$(TOOLS)/flytepropeller

$(TOOLS)/etcd: tools/etcd/go.mod tools/etcd/go.sum tools/build.sh
	tools/build.sh etcd
$(TOOLS)/kube-apiserver $(TOOLS)/kube-controller-manager $(TOOLS)/kube-scheduler $(TOOLS)/kwok: tools/kube/go.mod tools/kube/go.sum tools/build.sh
	tools/build.sh $(notdir $@)
$(TOOLS)/pulumi: tools/pulumi/go.mod tools/pulumi/go.sum tools/build.sh
	tools/build.sh pulumi
$(TOOLS)/pulumi-language-python: tools/pulumi-language-python/go.mod tools/pulumi-language-python/go.sum tools/build.sh
	tools/build.sh pulumi-language-python
# Installed with the CLI (`pulumi plugin install --file`), so it comes after it.
$(PROVIDER): tools/pulumi-kubernetes/go.mod tools/pulumi-kubernetes/go.sum tools/build.sh $(TOOLS)/pulumi
	tools/build.sh pulumi-resource-kubernetes
$(TOOLS)/flytepropeller: tools/flytepropeller/go.mod tools/flytepropeller/go.sum tools/build.sh
	tools/build.sh flytepropeller

# Serial on purpose: each Go build already uses every core.
tools:
	$(MAKE) -j1 $(TOOL_BINS)

# GRAPHFLEET_REQUIRE_TOOLS: under `make test` a missing tool fails the real-engine tests instead of
# skipping them (a plain `pytest` skips them with "run `make tools`").
test: $(STAMP) $(SCAN_STAMP) tools
	GRAPHFLEET_REQUIRE_TOOLS=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy infra flyte_agent graph_engine workflows
