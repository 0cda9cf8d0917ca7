# `make demo`: install, train on the built-in data, open the dashboard.  `make test`: install, run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
PORT ?= 8501

.PHONY: install demo train-demo dashboard lint test bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes (or the venv is missing): a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: train-demo dashboard

train-demo: install
	$(BIN)/python cli.py demo

dashboard: install
	$(BIN)/streamlit run dashboard/Home.py --server.port $(PORT) --server.headless true

# ruff and mypy over sslmri_core/ and cli.py (configured in pyproject.toml); part of `make test`.
lint: install
	$(BIN)/ruff check sslmri_core cli.py
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest

clean:
	rm -rf runs runs.db runs.db-wal runs.db-shm .pytest_cache
