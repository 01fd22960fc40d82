# The two newcomer commands: `make run` (set up, then run the main job on embedded defaults)
# and `make test`. Both create .venv from the pinned lock file on first use.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV := uv==0.13.8

.PHONY: setup run test lint bench

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	# uv installs the lock's several GB (torch's CUDA wheels) in parallel and hard-links from its cache.
	$(PY) -m pip install --quiet $(UV)
	# --no-deps: the lock is the full, resolved set; skipping the resolver saves minutes.
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pyflyte run workflows/gnn_training.py gnn_training

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy infra flyte_agent graph_engine workflows
