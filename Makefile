# Two commands on a fresh machine: `make run` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench db clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chargebot demo $(if $(PORT),--port $(PORT))

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ingest_workers.py
	$(BIN)/python bench/nearest.py
	$(BIN)/python bench/bill_latency.py
	$(BIN)/python bench/settle.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/broadcast.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/ap3000.py
	$(BIN)/python bench/ocpp16.py

db: $(STAMP)
	$(BIN)/chargebot db upgrade

clean:
	rm -rf $(VENV) var
